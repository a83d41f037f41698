"""Shared mode (many workers on one database): fenced batch leases, claimable ranges of a batch's
requests, result rows every worker can read, live workers, shared upstream pauses and replica
ejections.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "batches",
        sa.Column("lease_epoch", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_table(
        "batch_ranges",
        sa.Column("batch_id", sa.String(64), primary_key=True),
        sa.Column("start", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("stop", sa.Integer(), nullable=False),
        sa.Column("index_offset", sa.BigInteger(), nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_table(
        "batch_results",
        sa.Column("batch_id", sa.String(64), primary_key=True),
        sa.Column("idx", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("line", sa.LargeBinary(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_table(
        "workers",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("info", sa.JSON(), nullable=True),
    )
    op.create_table(
        "model_pauses",
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("paused_until", sa.Float(), nullable=False),
    )
    op.create_table(
        "replica_ejections",
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("replica", sa.String(256), primary_key=True),
        sa.Column("open_until", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("replica_ejections")
    op.drop_table("model_pauses")
    op.drop_table("workers")
    op.drop_table("batch_results")
    op.drop_table("batch_ranges")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("lease_epoch")
