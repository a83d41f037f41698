"""Blob storage: file contents, behind a small interface.

:class:`LocalStorage` keeps blobs in a directory; every blob is written to a temporary file, hashed
and counted on the way, flushed to disk, then renamed into place, so a crash never leaves a partial
blob under a real key.
"""

from batchd.storage.base import BlobInfo, BlobTooLarge, BlobWriter, Storage, storage_fault
from batchd.storage.local import LocalStorage

__all__ = ["BlobInfo", "BlobTooLarge", "BlobWriter", "LocalStorage", "Storage", "storage_fault"]
