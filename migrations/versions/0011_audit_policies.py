"""Audit policies (audits started by an event) and what started a job (``jobs.trigger``).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 18:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.db.types

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('audit_policies',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('trigger', sa.String(length=40), nullable=False),
    sa.Column('spec', services.db.types.JSONType, nullable=False),
    sa.Column('registered_model', sa.String(length=200), nullable=True),
    sa.Column('state', services.db.types.JSONType, nullable=True),
    sa.Column('created_by', sa.String(length=32), nullable=False),
    sa.Column('created_at', services.db.types.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_audit_policies_tenant_id_tenants'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_policies'))
    )
    with op.batch_alter_table('audit_policies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_policies_tenant_id'), ['tenant_id'], unique=False)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('trigger', services.db.types.JSONType, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('trigger')
    with op.batch_alter_table('audit_policies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_policies_tenant_id'))
    op.drop_table('audit_policies')
