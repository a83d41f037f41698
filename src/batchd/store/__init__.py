"""The metadata store: files and batches, behind a small async interface.

:class:`SQLStore` serves SQLite (the default, in WAL mode) and any other SQLAlchemy async URL with
portable SQL; the schema is managed by the Alembic migrations in ``migrations/``.
"""

from batchd.store.records import ApiKeyRecord, BatchRecord, FileRecord
from batchd.store.sql import SQLStore, Store

__all__ = ["ApiKeyRecord", "BatchRecord", "FileRecord", "SQLStore", "Store"]
