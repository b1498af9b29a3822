"""Human review of a study's reconstructions: review sessions and their trials.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 17:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.db.types

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('review_sessions',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('reviewer', sa.String(length=32), nullable=False),
    sa.Column('invited_by', sa.String(length=32), nullable=False),
    sa.Column('settings', services.db.types.JSONType, nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('answered', sa.Integer(), nullable=False),
    sa.Column('created_at', services.db.types.UTCDateTime(), nullable=False),
    sa.Column('finished_at', services.db.types.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_review_sessions_job_id_jobs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_review_sessions_tenant_id_tenants'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_review_sessions'))
    )
    with op.batch_alter_table('review_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_review_sessions_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_review_sessions_reviewer'), ['reviewer'], unique=False)
        batch_op.create_index(batch_op.f('ix_review_sessions_tenant_id'), ['tenant_id'], unique=False)
    op.create_table('review_trials',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('session_id', sa.String(length=40), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('source', sa.String(length=500), nullable=False),
    sa.Column('item', sa.Integer(), nullable=False),
    sa.Column('attack', sa.String(length=100), nullable=True),
    sa.Column('defense', sa.String(length=200), nullable=True),
    sa.Column('seed', sa.Integer(), nullable=True),
    sa.Column('identity', sa.Integer(), nullable=True),
    sa.Column('candidates', services.db.types.JSONType, nullable=False),
    sa.Column('right', sa.String(length=8), nullable=True),
    sa.Column('judge_hits', services.db.types.JSONType, nullable=True),
    sa.Column('choice', sa.String(length=8), nullable=True),
    sa.Column('correct', sa.Boolean(), nullable=True),
    sa.Column('answered_at', services.db.types.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['session_id'], ['review_sessions.id'],
                            name=op.f('fk_review_trials_session_id_review_sessions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_review_trials')),
    sa.UniqueConstraint('session_id', 'position', name=op.f('uq_review_trials_session_id_position'))
    )
    with op.batch_alter_table('review_trials', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_review_trials_session_id'), ['session_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('review_trials', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_review_trials_session_id'))
    op.drop_table('review_trials')
    with op.batch_alter_table('review_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_review_sessions_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_review_sessions_reviewer'))
        batch_op.drop_index(batch_op.f('ix_review_sessions_job_id'))
    op.drop_table('review_sessions')
