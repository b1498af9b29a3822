"""Serving: per-model output policy and budget (model_policies), query accounting (model_usage).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 03:09:02.549778
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.db.types

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('model_policies',
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('policy', sa.String(length=20), nullable=False),
    sa.Column('top_k', sa.Integer(), nullable=True),
    sa.Column('decimals', sa.Integer(), nullable=True),
    sa.Column('budget', sa.BigInteger(), nullable=True),
    sa.Column('updated_at', services.db.types.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_model_policies_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_model_policies'))
    )
    op.create_table('model_usage',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('queries', sa.BigInteger(), nullable=False),
    sa.Column('rejected', sa.BigInteger(), nullable=False),
    sa.Column('last_at', services.db.types.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_model_usage_job_id_jobs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['key_id'], ['api_keys.key_id'], name=op.f('fk_model_usage_key_id_api_keys'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_usage')),
    sa.UniqueConstraint('key_id', 'job_id', name=op.f('uq_model_usage_key_id_job_id'))
    )
    with op.batch_alter_table('model_usage', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_usage_job_id'), ['job_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('model_usage', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_usage_job_id'))

    op.drop_table('model_usage')
    op.drop_table('model_policies')
