"""Projects: every file and batch belongs to the project of the API key that created it; API
keys made with ``batchd keys create`` (hashed).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    for table in ("files", "batches"):
        op.add_column(
            table,
            sa.Column("project", sa.String(128), nullable=False, server_default="default"),
        )
        op.create_index(f"ix_{table}_project", table, ["project"])
    op.add_column(
        "batches",
        sa.Column("enqueued_tokens", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_table(
        "api_keys",
        sa.Column("seq", _Seq, primary_key=True, autoincrement=True),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("name", sa.String(128), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("enqueued_tokens")
    for table in ("batches", "files"):
        op.drop_index(f"ix_{table}_project", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("project")
