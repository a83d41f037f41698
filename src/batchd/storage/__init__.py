"""Blob storage: file contents, behind a small interface.

:class:`LocalStorage` keeps blobs in a directory; every blob is written to a temporary file, hashed
and counted on the way, flushed to disk, then renamed into place, so a crash never leaves a partial
blob under a real key. :class:`~batchd.storage.s3.S3Storage` keeps them in an S3-compatible bucket
(``storage_url``); :func:`open_storage` picks the one the settings name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchd.storage.base import BlobInfo, BlobTooLarge, BlobWriter, Storage, storage_fault
from batchd.storage.local import LocalStorage

if TYPE_CHECKING:
    from batchd.config import Settings

__all__ = [
    "BlobInfo",
    "BlobTooLarge",
    "BlobWriter",
    "LocalStorage",
    "Storage",
    "open_storage",
    "storage_fault",
]


def open_storage(settings: Settings) -> Storage:
    """The blob storage of ``settings``: the bucket of ``storage_url`` when set, else the data
    directory's ``files/`` (nothing is opened yet: call its ``open``)."""
    if settings.storage_url is None:
        return LocalStorage(settings.data_dir / "files")
    from batchd.storage.s3 import S3Storage  # obstore is loaded only when a bucket is used

    return S3Storage(settings.storage_url, endpoint_url=settings.storage_endpoint_url)
