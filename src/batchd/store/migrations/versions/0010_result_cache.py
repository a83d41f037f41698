"""The cross-batch result cache of routes with ``cache = true``: one row per (project, digest of
route, endpoint and canonical body), with the stored answer, until ``expires_at``.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "result_cache",
        sa.Column("project", sa.String(128), primary_key=True),
        sa.Column("digest", sa.LargeBinary(32), primary_key=True),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_result_cache_expires", "result_cache", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_result_cache_expires", "result_cache")
    op.drop_table("result_cache")
