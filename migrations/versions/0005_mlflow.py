"""MLflow hand-off: each tenant's MLflow server (mlflow_integrations), and the webhook outbox carries
MLflow hand-offs too (webhook_deliveries.channel, .mlflow_tenant_id; webhook_id becomes nullable).

Existing outbox rows are webhook messages (channel 'webhook').

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 12:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.db.types

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('mlflow_integrations',
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('tracking_uri', sa.Text(), nullable=False),
    sa.Column('experiment', sa.String(length=500), nullable=False),
    sa.Column('registered_model', sa.String(length=500), nullable=True),
    sa.Column('token', sa.Text(), nullable=True),
    sa.Column('username', sa.String(length=500), nullable=True),
    sa.Column('password', sa.Text(), nullable=True),
    sa.Column('created_at', services.db.types.UTCDateTime(), nullable=False),
    sa.Column('updated_at', services.db.types.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_mlflow_integrations_tenant_id_tenants'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_mlflow_integrations'))
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('channel', sa.String(length=16), server_default='webhook', nullable=False))
        batch_op.add_column(sa.Column('mlflow_tenant_id', sa.String(length=40), nullable=True))
        batch_op.alter_column('webhook_id', existing_type=sa.String(length=40), nullable=True)
        batch_op.create_index(batch_op.f('ix_webhook_deliveries_mlflow_tenant_id'), ['mlflow_tenant_id'],
                              unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_webhook_deliveries_mlflow_tenant_id_mlflow_integrations'),
                                    'mlflow_integrations', ['mlflow_tenant_id'], ['tenant_id'], ondelete='CASCADE')


def downgrade() -> None:
    op.execute("DELETE FROM webhook_deliveries WHERE channel <> 'webhook'")  # hand-offs have no webhook
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_webhook_deliveries_mlflow_tenant_id_mlflow_integrations'),
                                 type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_webhook_deliveries_mlflow_tenant_id'))
        batch_op.alter_column('webhook_id', existing_type=sa.String(length=40), nullable=False)
        batch_op.drop_column('mlflow_tenant_id')
        batch_op.drop_column('channel')
    op.drop_table('mlflow_integrations')
