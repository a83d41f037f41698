"""The engine: everything that happens to a batch after ``POST /v1/batches``.

For now: validation in the background, cancellation, recovery after a restart, and purging the
blobs of deleted and expired files. Execution arrives with the provider layer.
"""

from batchd.engine.manager import ACTIVE_STATUSES, BatchManager

__all__ = ["ACTIVE_STATUSES", "BatchManager"]
