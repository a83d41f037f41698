"""The lifecycle's outbox and typed endings: ``batch_events`` (one row per status change),
``projects`` (the row that admission locks), and the ending of a running batch as columns instead
of keys of the untyped ``extra`` JSON (which goes).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ENDING_COLUMNS = ("ending", "ending_output_file_id", "ending_error_file_id")


def _batches() -> sa.TableClause:
    """The columns of ``batches`` that this migration moves between ``extra`` and its own."""
    return sa.table(
        "batches",
        sa.column("id", sa.String()),
        sa.column("extra", sa.JSON()),
        *(sa.column(name, sa.String()) for name in _ENDING_COLUMNS),
    )


def upgrade() -> None:
    op.create_table(
        "batch_events",
        sa.Column("seq", _Seq, primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_batch_events_batch_id", "batch_events", ["batch_id"])
    op.create_table(
        "projects",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )
    op.add_column("batches", sa.Column("ending", sa.String(16), nullable=True))
    op.add_column("batches", sa.Column("ending_output_file_id", sa.String(64), nullable=True))
    op.add_column("batches", sa.Column("ending_error_file_id", sa.String(64), nullable=True))
    # A batch that was ending when the previous version stopped keeps its ending and file ids.
    batches = _batches()
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(batches.c.id, batches.c.extra).where(batches.c.extra.is_not(None))
    )
    for batch_id, extra in rows.all():
        values = _ending_of(extra)
        if values is not None:
            conn.execute(sa.update(batches).where(batches.c.id == batch_id).values(**values))
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("extra")


def _ending_of(extra: Any) -> dict[str, str] | None:
    if not isinstance(extra, dict) or "ending" not in extra:
        return None
    output_id, error_id = extra["files"]
    return {
        "ending": extra["ending"],
        "ending_output_file_id": output_id,
        "ending_error_file_id": error_id,
    }


def downgrade() -> None:
    op.add_column("batches", sa.Column("extra", sa.JSON(), nullable=True))
    batches = _batches()
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(batches.c.id, *(batches.c[name] for name in _ENDING_COLUMNS)).where(
            batches.c.ending.is_not(None)
        )
    )
    for batch_id, ending, output_id, error_id in rows.all():
        extra = {"ending": ending, "files": [output_id, error_id]}
        conn.execute(sa.update(batches).where(batches.c.id == batch_id).values(extra=extra))
    with op.batch_alter_table("batches") as batch:
        for name in reversed(_ENDING_COLUMNS):
            batch.drop_column(name)
    op.drop_table("projects")
    op.drop_index("ix_batch_events_batch_id", table_name="batch_events")
    op.drop_table("batch_events")
