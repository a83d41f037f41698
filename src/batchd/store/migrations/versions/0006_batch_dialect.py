"""The API that created a batch (``openai`` or ``azure``): Azure's batches always publish an
error file; and why a batch file failed validation while it was uploaded (Azure's file
``status_details``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "batches",
        sa.Column("dialect", sa.String(16), nullable=False, server_default="openai"),
    )
    op.add_column("files", sa.Column("status_details", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("dialect")
    with op.batch_alter_table("files") as table:
        table.drop_column("status_details")
