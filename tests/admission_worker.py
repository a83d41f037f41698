"""A process that creates batches through the service layer at a given moment, for the admission
tests across processes (``tests/test_service.py``).

``python -m tests.admission_worker URL COUNT START_AT LIMITS_JSON`` creates COUNT batches at once,
as soon as the wall clock reaches START_AT, in the project ``p`` with the given project limits,
and prints how many were admitted and how many refused with 429.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import orjson

from batchd.config import ProjectLimits, Settings
from batchd.errors import RateLimited
from batchd.service import BatchService, NewBatch
from batchd.store import BatchRecord, SQLStore


class _NoEngine:
    def batch_created(self, batch: BatchRecord) -> None:
        pass

    def batch_cancelled(self, batch: BatchRecord) -> None:
        pass

    def files_deleted(self) -> None:
        pass


async def main(url: str, count: int, start_at: float, limits: dict[str, Any]) -> None:
    settings = Settings(embedded_models=False, project_limits=ProjectLimits.model_validate(limits))
    store = SQLStore(url)
    await store.open()
    service = BatchService(store, settings, _NoEngine())
    await asyncio.sleep(max(0.0, start_at - time.time()))

    async def one() -> bool:
        try:
            await service.create("p", NewBatch("file-x", "/v1/chat/completions"))
        except RateLimited:
            return False
        return True

    outcomes = await asyncio.gather(*(one() for _ in range(count)))
    await store.close()
    sys.stdout.write(
        orjson.dumps({"admitted": sum(outcomes), "refused": count - sum(outcomes)}).decode()
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), orjson.loads(sys.argv[4])))
