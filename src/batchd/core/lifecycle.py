"""The batch lifecycle: the statuses, their groups, the allowed transitions, and the only
functions that change a batch's status.

::

    validating ──▶ in_progress ──▶ finalizing ──▶ completed
        │  │           │   │            │
        │  └─▶ failed  │   └─▶ expired  │
        ▼              ▼                ▼
    cancelling ◀───────┴────────────────┘
        │
        ▼
    cancelled

Every change is a compare-and-set in the store (it applies only while the batch is in one of the
``expected`` statuses) and writes a :class:`BatchEvent` row in the same transaction: the outbox
that webhooks, metrics and the dashboard read. A batch's creation is an event too (from
``None`` to ``validating``). Nothing else writes a status: :func:`create`, :func:`transition` and
:func:`record_ending` are the one way in, and a transition that :data:`TRANSITIONS` does not
allow raises :class:`IllegalTransition` before the store is touched.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack, get_args

from batchd.errors import BatchdError

if TYPE_CHECKING:
    from batchd.store.base import BatchAdmission, Store
    from batchd.store.records import BatchRecord

__all__ = [
    "ACTIVE",
    "CANCELLABLE",
    "ENQUEUED",
    "RUNNABLE",
    "STATUSES",
    "TERMINAL",
    "TRANSITIONS",
    "BatchEnding",
    "BatchEvent",
    "BatchStatus",
    "BatchUpdate",
    "IllegalTransition",
    "Outcome",
    "StatusChange",
    "TokenQuota",
    "create",
    "parse_outcome",
    "parse_status",
    "record_ending",
    "transition",
]

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
STATUSES: tuple[BatchStatus, ...] = get_args(BatchStatus)

TERMINAL: frozenset[BatchStatus] = frozenset({"completed", "failed", "expired", "cancelled"})
"""Nothing happens to the batch any more."""
ACTIVE: frozenset[BatchStatus] = frozenset(STATUSES) - TERMINAL
"""Not terminal: counted against ``max_active_batches``; their input files are not purged."""
RUNNABLE: frozenset[BatchStatus] = frozenset({"in_progress", "finalizing", "cancelling"})
"""What the scheduler claims (once validation accepted the batch: ``in_progress_at`` is set)."""
CANCELLABLE: frozenset[BatchStatus] = frozenset({"validating", "in_progress", "finalizing"})
"""Where ``POST /cancel`` moves a batch to ``cancelling``."""
ENQUEUED: frozenset[BatchStatus] = frozenset({"in_progress", "finalizing", "cancelling"})
"""Whose estimated tokens count against the project's enqueued-token limit."""

TRANSITIONS: Mapping[BatchStatus, frozenset[BatchStatus]] = {
    "validating": frozenset({"in_progress", "failed", "cancelling"}),
    "in_progress": frozenset({"finalizing", "expired", "cancelling"}),
    "finalizing": frozenset({"completed", "cancelling"}),
    "cancelling": frozenset({"cancelled"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "expired": frozenset(),
    "cancelled": frozenset(),
}
"""The allowed transitions, from each status."""

_BY_NAME: dict[str, BatchStatus] = {status: status for status in STATUSES}

Outcome = Literal["completed", "cancelled", "expired"]
"""How a batch that ran ends (``failed`` is for batches that validation refused)."""
_OUTCOMES: dict[str, Outcome] = {outcome: outcome for outcome in get_args(Outcome)}


def parse_status(value: str) -> BatchStatus:
    """``value`` as a :data:`BatchStatus` (what the store reads back); :class:`ValueError`
    for anything else."""
    try:
        return _BY_NAME[value]
    except KeyError:
        raise ValueError(f"not a batch status: {value!r}") from None


def parse_outcome(value: str) -> Outcome:
    """``value`` as an :data:`Outcome`; :class:`ValueError` for anything else."""
    try:
        return _OUTCOMES[value]
    except KeyError:
        raise ValueError(f"not a batch outcome: {value!r}") from None


class IllegalTransition(BatchdError):
    """A change of status that the lifecycle does not allow (a bug in batchd, not a race)."""


@dataclass(frozen=True, slots=True)
class BatchEnding:
    """How a running batch ends and the ids of the two files it publishes, stored before any
    of it is written, so that a crash halfway repeats the same ending with the same ids."""

    outcome: Outcome
    output_file_id: str
    error_file_id: str


class BatchUpdate(TypedDict, total=False):
    """The fields a transition may set besides the status and its ``<status>_at``."""

    model: str | None
    total: int
    errors: list[dict[str, Any]] | None
    enqueued_tokens: int
    output_file_id: str | None
    error_file_id: str | None
    completed: int
    failed: int
    unexecuted: int
    usage: dict[str, Any] | None
    ending: BatchEnding | None


@dataclass(frozen=True, slots=True)
class TokenQuota:
    """A transition to an :data:`ENQUEUED` status that reserves ``tokens`` of ``model`` for the
    batch's project, refused when the project's enqueued tokens would pass ``limit``."""

    model: str
    limit: int
    tokens: int


@dataclass(frozen=True, slots=True)
class StatusChange:
    """What the store applies, in one transaction: if the batch is in one of ``expected``, move
    it to ``to`` (stamping ``<to>_at`` with ``at``), set ``update``, and write the event. With
    ``to=None`` the status stays and no event is written (:func:`record_ending`)."""

    batch_id: str
    expected: frozenset[BatchStatus]
    to: BatchStatus | None
    at: int
    update: BatchUpdate
    quota: TokenQuota | None = None
    lease: tuple[str, int] | None = None
    """``(owner, epoch)`` of the engine's lease on the batch: the change is refused (``None``)
    once the batch was claimed by another engine since (fencing)."""


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """One row of the outbox: a batch moved from ``from_status`` (``None``: it was created) to
    ``to_status`` at ``created_at``. ``seq`` increases with every event."""

    seq: int
    batch_id: str
    project: str
    from_status: BatchStatus | None
    to_status: BatchStatus
    created_at: int


def check_transition(expected: Collection[BatchStatus], to: BatchStatus) -> None:
    """Raise :class:`IllegalTransition` unless every status of ``expected`` may move to ``to``."""
    if not expected:
        raise IllegalTransition(f"a transition to {to!r} needs the statuses it may start from")
    for status in expected:
        if to not in TRANSITIONS[status]:
            raise IllegalTransition(f"a batch may not go from {status!r} to {to!r}")


async def create(store: Store, record: BatchRecord, *, admission: BatchAdmission | None) -> None:
    """Store a new ``validating`` batch and its creation event, if ``admission`` (the project's
    batch limits, checked in the same transaction) lets it in; otherwise the store raises
    :class:`~batchd.errors.BatchLimitReached`."""
    if record.status != "validating":
        raise IllegalTransition(f"a batch is created 'validating', not {record.status!r}")
    await store.create_batch(record, admission=admission)


async def transition(
    store: Store,
    batch_id: str,
    to: BatchStatus,
    *,
    expected: Collection[BatchStatus],
    at: int,
    quota: TokenQuota | None = None,
    lease: tuple[str, int] | None = None,
    **update: Unpack[BatchUpdate],
) -> BatchRecord | None:
    """Move the batch to ``to`` if it is in one of ``expected`` (compare-and-set), with
    ``<to>_at = at`` and ``update``, and write the event; the batch after the change, or ``None``
    when it is missing or in another status (someone else moved it first).

    With a ``quota``, the project's enqueued tokens are checked and the batch's reserved in the
    same transaction; over the limit, the store raises :class:`~batchd.errors.TokenQuotaExceeded`
    and nothing changes.
    """
    check_transition(expected, to)
    change = StatusChange(batch_id, frozenset(expected), to, at, update, quota, lease)
    return await store.apply(change)


async def record_ending(
    store: Store,
    batch_id: str,
    *,
    status: BatchStatus,
    ending: BatchEnding,
    at: int,
    lease: tuple[str, int] | None = None,
) -> BatchRecord | None:
    """Store how a running batch will end, while it stays in ``status`` (a runnable one); the
    batch after that, or ``None`` when it is no longer in ``status``."""
    if status not in RUNNABLE:
        raise IllegalTransition(f"a batch in {status!r} is not running: it has no ending")
    change = StatusChange(batch_id, frozenset({status}), None, at, {"ending": ending}, lease=lease)
    return await store.apply(change)
