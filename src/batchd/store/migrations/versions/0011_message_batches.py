"""Anthropic's Message Batches: how many of a batch's failed requests never ran (cancelled or
expired before they were sent), for ``request_counts``; and when a batch was deleted.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "batches", sa.Column("unexecuted", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column("batches", sa.Column("deleted_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("unexecuted")
