"""The metadata store: files, batches and their lifecycle events, behind a small async interface.

:class:`Store` (in ``base.py``) is the interface; :class:`SQLStore` serves SQLite (the default, in
WAL mode) and any other SQLAlchemy async URL with portable SQL; the schema (``schema.py``) is
managed by the Alembic migrations in ``migrations/``.
"""

from batchd.store.base import BatchAdmission, Order, Store
from batchd.store.records import ApiKeyRecord, BatchRecord, FileRecord
from batchd.store.sql import SQLStore

__all__ = [
    "ApiKeyRecord",
    "BatchAdmission",
    "BatchRecord",
    "FileRecord",
    "Order",
    "SQLStore",
    "Store",
]
