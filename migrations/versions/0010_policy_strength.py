"""The serving-time defense ``shield``: its strength on a model's output policy.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 17:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('model_policies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('strength', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model_policies', schema=None) as batch_op:
        batch_op.drop_column('strength')
