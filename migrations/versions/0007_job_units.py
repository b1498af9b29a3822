"""Fanned-out studies: job_units, one row per unit of a study's task graph.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 13:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.db.types

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('job_units',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('key', sa.String(length=300), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('params', services.db.types.JSONType, nullable=False),
    sa.Column('deps', services.db.types.JSONType, nullable=False),
    sa.Column('weight', sa.Float(), nullable=False),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('result', services.db.types.JSONType, nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('created_at', services.db.types.UTCDateTime(), nullable=False),
    sa.Column('dispatched_at', services.db.types.UTCDateTime(), nullable=True),
    sa.Column('started_at', services.db.types.UTCDateTime(), nullable=True),
    sa.Column('heartbeat_at', services.db.types.UTCDateTime(), nullable=True),
    sa.Column('finished_at', services.db.types.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_units_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_units')),
    sa.UniqueConstraint('job_id', 'key', name=op.f('uq_job_units_job_id_key'))
    )
    with op.batch_alter_table('job_units', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_units_job_id'), ['job_id'], unique=False)
        batch_op.create_index('ix_job_units_job_id_status', ['job_id', 'status'], unique=False)
        batch_op.create_index(batch_op.f('ix_job_units_status'), ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('job_units', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_units_status'))
        batch_op.drop_index('ix_job_units_job_id_status')
        batch_op.drop_index(batch_op.f('ix_job_units_job_id'))

    op.drop_table('job_units')
