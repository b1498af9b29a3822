"""Workers and the queues they consume (the ``auto`` route, ``/readyz``, unserved-queue warnings).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 13:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.db.types

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('workers',
    sa.Column('id', sa.String(length=200), nullable=False),
    sa.Column('queues', services.db.types.JSONType, nullable=False),
    sa.Column('started_at', services.db.types.UTCDateTime(), nullable=False),
    sa.Column('seen_at', services.db.types.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_workers_seen_at'), 'workers', ['seen_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_workers_seen_at'), table_name='workers')
    op.drop_table('workers')
