"""Webhooks: endpoints added with ``batchd webhooks add``, one delivery row per (event, endpoint)
with its attempts and lease, and the cursor of the outbox's fan-out (started at the newest event:
batches that ended before the upgrade send nothing). Admin keys in the store
(``batchd keys create --admin``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column(
        "api_keys",
        sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("seq", _Seq, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(256), nullable=False),
        sa.Column("events", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_webhook_endpoints_project", "webhook_endpoints", ["project"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("seq", _Seq, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("endpoint_id", sa.String(64), nullable=False),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float(), nullable=True),
        sa.Column("last_attempt_at", sa.Float(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("lease_epoch", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_index(
        "ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"]
    )
    op.create_index(
        "ix_webhook_deliveries_batch", "webhook_deliveries", ["batch_id", "endpoint_id"]
    )
    op.create_table(
        "webhook_cursor",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
    )
    op.execute(
        "INSERT INTO webhook_cursor (name, seq) "
        "SELECT 'fanout', COALESCE(MAX(seq), 0) FROM batch_events"
    )


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        table.drop_column("admin")
    op.drop_table("webhook_cursor")
    op.drop_index("ix_webhook_deliveries_batch", "webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_due", "webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_webhook_endpoints_project", "webhook_endpoints")
    op.drop_table("webhook_endpoints")
