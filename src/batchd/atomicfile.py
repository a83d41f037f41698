"""A file that appears whole or not at all: written under a temporary name beside its path, then
renamed over it. Used by ``batchd run`` and ``batchd download`` (results copied out) and by
``batchd prepare`` and ``batchd join`` (tables written)."""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import IO

__all__ = ["AtomicFile"]


class AtomicFile:
    """A file written under a temporary name next to ``path`` and renamed over it by
    :meth:`commit`, so a failed or interrupted command never leaves a half-written file.

    A ``path`` whose directory does not exist is a :class:`FileNotFoundError` that says so.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.parent.is_dir():
            raise FileNotFoundError(
                errno.ENOENT,
                f"cannot write {path}: the directory {path.parent} does not exist",
            )
        while True:  # mkstemp would make it 0600; this honours the umask, as open() does
            self.temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            try:
                fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            break
        self.file: IO[bytes] = os.fdopen(fd, "wb")

    def close(self) -> None:
        """Flush, fsync and close the temporary file (:meth:`commit` then renames it)."""
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()

    def commit(self) -> None:
        """Close the file and move it into place."""
        self.close()
        os.replace(self.temp, self.path)

    def discard(self) -> None:
        """Remove the temporary file (after an error)."""
        self.file.close()
        self.temp.unlink(missing_ok=True)
