"""One process per data directory: an exclusive ``flock`` on ``<data_dir>/batchd.lock``.

The kernel releases the lock when the holder exits, however it exits (``kill -9`` included), so a
stale lock never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from batchd.errors import DataDirLocked

__all__ = ["DataDirLock"]


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "batchd.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`DataDirLocked` naming the process that holds it."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLocked(
                f"another batchd process (pid {holder}) is already serving the data directory "
                f"{self.path.parent}. One data directory is served by one process; stop the "
                "other one or start this one with a different --data-dir."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
