"""Scoped API keys (name, scopes, model allow-list) and the resolved config of each job.

Existing keys become ``admin`` keys: they could do everything before, and still can.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 11:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('name', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('scopes', JSON, nullable=True))
        batch_op.add_column(sa.Column('model_ids', JSON, nullable=True))
    op.execute("UPDATE api_keys SET scopes = '[\"admin\"]'")
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.alter_column('scopes', existing_type=JSON, nullable=False)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resolved', JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('resolved')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('model_ids')
        batch_op.drop_column('scopes')
        batch_op.drop_column('name')
