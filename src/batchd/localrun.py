"""One batch file run to its end with the engine and no server (``batchd run``).

A run keeps its state in a directory of its own (a batchd data directory: the SQLite store, the
stored input, the journal): the input file is stored there and a batch is created on it through
the same service layer as ``POST /v1/files`` and ``POST /v1/batches`` (the file validated and
indexed while it is stored), so validation, routing, retries, the journal and the output format
are the server's. Started again on the same state directory, a run finds
its batch by the input's SHA-256 (kept in the batch's metadata) and the engine resumes it: every
request with a durable result in the journal is kept, the others are sent. The state directory
holds one input at a time: another input there is refused rather than mixed in.

A batch without a completion window: an offline run has no deadline (``expires_at`` is null);
stop it with Ctrl-C and start it again.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from batchd.atomicfile import AtomicFile
from batchd.auth import DEFAULT_PROJECT
from batchd.core.lifecycle import TERMINAL
from batchd.errors import BatchdError, NotFound
from batchd.protocol import BATCH_ENDPOINTS
from batchd.runtime import Services
from batchd.service import NewBatch
from batchd.storage import BlobTooLarge
from batchd.storage.local import LocalStorage, fsync_dir
from batchd.store import BatchRecord
from batchd.validation import normalize_url

__all__ = ["LocalRun", "RunError", "file_sha256", "first_endpoint"]

SHA_KEY = "batchd_run_sha256"
NAME_KEY = "batchd_run_input"
_CHUNK = 1 << 20


class RunError(BatchdError):
    """A run cannot start or go on (the message says what to do)."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def first_endpoint(path: Path) -> str | None:
    """The ``url`` of the file's first request line, when it names a batch endpoint."""
    import orjson

    with path.open("rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return None
            url = line.get("url") if isinstance(line, dict) else None
            if isinstance(url, str) and normalize_url(url) in BATCH_ENDPOINTS:
                return url
            return None
    return None


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where a finished run's files were written."""

    batch: BatchRecord
    output: Path | None
    errors: Path | None


class LocalRun:
    """One input file's batch in ``services`` (see the module docstring)."""

    def __init__(self, services: Services, input_path: Path, endpoint: str | None = None) -> None:
        self.services = services
        self.input_path = input_path
        self.endpoint = endpoint

    async def start(self) -> tuple[BatchRecord, bool]:
        """The batch of this input: found in the state directory (resumed by the engine, which
        claims unfinished batches when it starts), or created. Also whether it was resumed."""
        found = await self._find()
        if found is None:
            return await self._create(), False
        sha = await asyncio.to_thread(file_sha256, self.input_path)
        if (found.metadata or {}).get(SHA_KEY) != sha:
            name = (found.metadata or {}).get(NAME_KEY, "another file")
            raise RunError(
                f"the state directory holds the run of {name}, whose contents differ from "
                f"{self.input_path}: give this run its own --state-dir, or delete the state "
                "directory to start over"
            )
        return found, True

    async def _find(self) -> BatchRecord | None:
        page = await self.services.batches.list(DEFAULT_PROJECT, after=None, limit=10)
        for record in page.data:
            if record.metadata and SHA_KEY in record.metadata:
                return record
        return None

    async def _create(self) -> BatchRecord:
        svc = self.services
        endpoint = self.endpoint or await asyncio.to_thread(first_endpoint, self.input_path)
        if endpoint is None:
            raise RunError(
                f"cannot tell the endpoint of {self.input_path}: its first line has no batch "
                "endpoint in 'url'; pass --endpoint, e.g. --endpoint /v1/chat/completions"
            )
        if normalize_url(endpoint) not in BATCH_ENDPOINTS:
            supported = ", ".join(BATCH_ENDPOINTS)
            raise RunError(f"--endpoint {endpoint!r} is not a batch endpoint ({supported})")
        ingest = svc.files.ingest("batch", None)
        try:
            async for chunk in _chunks(self.input_path):
                await asyncio.to_thread(ingest.write, chunk)
        except BaseException as exc:
            await ingest.abort()
            if isinstance(exc, BlobTooLarge):
                raise RunError(
                    f"{self.input_path} is larger than the batch file limit of {exc.limit:,} "
                    "bytes: split it, or raise max_batch_file_bytes and max_upload_bytes in the "
                    "config file"
                ) from None
            raise
        file = await svc.files.create(
            DEFAULT_PROJECT, ingest, filename=self.input_path.name, purpose="batch", keep=True
        )
        new = NewBatch(
            input_file_id=file.id,
            endpoint=endpoint,
            metadata={SHA_KEY: file.sha256, NAME_KEY: self.input_path.name[:500]},
            deadline=False,
        )
        return await svc.batches.create(DEFAULT_PROJECT, new)

    async def watch(self, batch_id: str, interval: float = 0.5) -> AsyncIterator[BatchRecord]:
        """The batch every ``interval`` seconds, until (and including) its terminal state."""
        while True:
            try:
                record = await self.services.batches.get(DEFAULT_PROJECT, batch_id)
            except NotFound:  # pragma: no cover - nothing deletes batches
                raise RunError(f"batch {batch_id} vanished from the state directory") from None
            yield record
            if record.status in TERMINAL:
                return
            await asyncio.sleep(interval)

    async def export(
        self, batch: BatchRecord, output: Path, errors: Path, *, link: bool = False
    ) -> Outcome:
        """Copy the batch's output and error files to ``output`` and ``errors`` (each written
        to a temporary file beside it, then renamed); a file the batch does not have is not
        written, and a stale one at that path is left alone. With ``link`` (the state
        directory is removed next, so nothing else will read the stored files) a stored file on
        the same filesystem is hard-linked into place instead of copied."""
        written: list[Path | None] = []
        for file_id, path in ((batch.output_file_id, output), (batch.error_file_id, errors)):
            if file_id is None:
                written.append(None)
                continue
            await self._copy_out(file_id, path, link)
            written.append(path)
        return Outcome(batch, written[0], written[1])

    async def _copy_out(self, file_id: str, path: Path, link: bool) -> None:
        record, chunks = await self.services.files.content(DEFAULT_PROJECT, file_id)
        storage = self.services.storage
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        if (
            link
            and isinstance(storage, LocalStorage)
            and await asyncio.to_thread(_link_file, storage.path(record.id), path)
        ):
            return
        out = await asyncio.to_thread(AtomicFile, path)
        try:
            if isinstance(storage, LocalStorage):
                # the blob is a local file: the kernel copies it (copy_file_range/sendfile), no
                # pass of its bytes through Python
                await asyncio.to_thread(_copy_file, storage.path(record.id), out)
            else:
                async for chunk in chunks:
                    await asyncio.to_thread(out.file.write, chunk)
            await asyncio.to_thread(out.commit)
        except BaseException:
            await asyncio.to_thread(out.discard)
            raise


def _link_file(source: Path, path: Path) -> bool:
    """Hard-link ``source`` to ``path`` (under a temporary name, then renamed over it);
    ``False`` where the two are on different filesystems or links are not allowed."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.link(source, temp)
    except OSError:
        return False
    try:
        os.replace(temp, path)
        fsync_dir(path.parent)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return True


def _copy_file(source: Path, out: AtomicFile) -> None:
    """``source``'s bytes into ``out`` by ``sendfile`` (in the kernel), or by reads and writes
    where the system cannot send to a file."""
    out.file.flush()
    with source.open("rb") as fh:
        size, offset = os.fstat(fh.fileno()).st_size, 0
        try:
            while offset < size:
                sent = os.sendfile(out.file.fileno(), fh.fileno(), offset, size - offset)
                if not sent:
                    break
                offset += sent
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSOCK) or offset:
                raise
        fh.seek(offset)
        shutil.copyfileobj(fh, out.file, _CHUNK)  # what is left (all of it without sendfile)


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as fh:
        while chunk := await asyncio.to_thread(fh.read, _CHUNK):
            yield chunk
