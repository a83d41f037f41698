"""The schema, as SQLAlchemy Core tables. Portable SQL only (SQLite and Postgres).

Changing this file needs a new Alembic revision in ``migrations/versions``; a test checks that the
migrations produce exactly this schema.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "api_keys",
    "batch_events",
    "batch_ranges",
    "batch_results",
    "batches",
    "files",
    "idempotency_keys",
    "metadata",
    "model_pauses",
    "projects",
    "replica_ejections",
    "webhook_cursor",
    "webhook_deliveries",
    "webhook_endpoints",
    "workers",
]

metadata = sa.MetaData()

# An auto-incrementing integer key that orders rows by insertion on both SQLite and Postgres.
_Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

files = sa.Table(
    "files",
    metadata,
    sa.Column("seq", _Seq, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("bytes", sa.BigInteger(), nullable=False),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("expires_at", sa.BigInteger(), nullable=True),
    sa.Column("filename", sa.String(512), nullable=False),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("deleted_at", sa.BigInteger(), nullable=True),
    sa.Column("purged_at", sa.BigInteger(), nullable=True),
    # A validation result computed while a batch file was uploaded (see batchd.validation).
    sa.Column("validation", sa.JSON(), nullable=True),
    # The project of the API key that uploaded it (see batchd.auth); "default" without keys.
    sa.Column("project", sa.String(128), nullable=False, server_default="default"),
    # Why a batch file's status is "error" (see FileRecord.status_details).
    sa.Column("status_details", sa.Text(), nullable=True),
    sa.Index("ix_files_purpose", "purpose"),
    sa.Index("ix_files_project", "project"),
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("seq", _Seq, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("model", sa.String(256), nullable=True),
    sa.Column("errors", sa.JSON(), nullable=True),
    sa.Column("input_file_id", sa.String(64), nullable=False),
    sa.Column("completion_window", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("output_file_id", sa.String(64), nullable=True),
    sa.Column("error_file_id", sa.String(64), nullable=True),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("in_progress_at", sa.BigInteger(), nullable=True),
    sa.Column("expires_at", sa.BigInteger(), nullable=True),
    sa.Column("finalizing_at", sa.BigInteger(), nullable=True),
    sa.Column("completed_at", sa.BigInteger(), nullable=True),
    sa.Column("failed_at", sa.BigInteger(), nullable=True),
    sa.Column("expired_at", sa.BigInteger(), nullable=True),
    sa.Column("cancelling_at", sa.BigInteger(), nullable=True),
    sa.Column("cancelled_at", sa.BigInteger(), nullable=True),
    sa.Column("total", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("completed", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("failed", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("usage", sa.JSON(), nullable=True),
    sa.Column("metadata", sa.JSON(), nullable=True),
    sa.Column("output_expires_after", sa.BigInteger(), nullable=True),
    # How a running batch ends and the ids of the files it publishes, stored before any of it is
    # written (see batchd.core.lifecycle.BatchEnding): NULL until the ending is decided.
    sa.Column("ending", sa.String(16), nullable=True),
    sa.Column("ending_output_file_id", sa.String(64), nullable=True),
    sa.Column("ending_error_file_id", sa.String(64), nullable=True),
    # The engine running the batch (see SQLStore.claim_batches); not part of BatchRecord.
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Column("lease_expires_at", sa.Float(), nullable=True),
    # Raised by every claim, so that a holder whose lease was taken over cannot change the batch
    # afterwards (fencing: see batchd.core.lifecycle.StatusChange.lease).
    sa.Column("lease_epoch", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("project", sa.String(128), nullable=False, server_default="default"),
    # Estimated prompt tokens, counted against the project's enqueued-token quota while the
    # batch is in progress (see batchd.validation.ValidationResult.estimated_tokens).
    sa.Column("enqueued_tokens", sa.BigInteger(), nullable=False, server_default="0"),
    # The API that created the batch (openai or azure; see BatchRecord.dialect).
    sa.Column("dialect", sa.String(16), nullable=False, server_default="openai"),
    # Of the failed requests, those that never ran (cancelled or expired before they were sent):
    # Anthropic's request_counts tell them apart.
    sa.Column("unexecuted", sa.Integer(), nullable=False, server_default="0"),
    # When the batch was deleted (Anthropic's DELETE of an ended batch): hidden from then on.
    sa.Column("deleted_at", sa.BigInteger(), nullable=True),
    sa.Index("ix_batches_status", "status"),
    sa.Index("ix_batches_project", "project"),
)

# Keys made with `batchd keys create` (keys in the config file are not stored): only the
# SHA-256 of each key is kept.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("seq", _Seq, primary_key=True, autoincrement=True),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("name", sa.String(128), nullable=True),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("revoked_at", sa.BigInteger(), nullable=True),
    sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false()),
)

# The outbox of the batch lifecycle: one row per status change, written in the transaction that
# makes the change (see batchd.core.lifecycle). ``seq`` orders the events; ``from_status`` is NULL
# for a batch's creation.
batch_events = sa.Table(
    "batch_events",
    metadata,
    sa.Column("seq", _Seq, primary_key=True, autoincrement=True),
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("from_status", sa.String(16), nullable=True),
    sa.Column("to_status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Index("ix_batch_events_batch_id", "batch_id"),
)

# One row per project that ever created a file or a batch: admission locks its row, so that a
# project's limits are checked and the new row written as one step, whatever the number of
# processes (Postgres: a row lock; SQLite: the database's write lock).
projects = sa.Table(
    "projects",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
)

# The work of a running batch split into claimable ranges of its requests (shared mode, see
# batchd.store.work): several workers run one batch at once, each holding a fenced lease on its
# ranges. ``index_offset`` is where the range's first entry lies in the request index.
batch_ranges = sa.Table(
    "batch_ranges",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("start", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("stop", sa.Integer(), nullable=False),
    sa.Column("index_offset", sa.BigInteger(), nullable=False),
    sa.Column("done", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("owner", sa.String(128), nullable=True),
    sa.Column("lease_expires_at", sa.Float(), nullable=True),
    sa.Column("epoch", sa.BigInteger(), nullable=False, server_default="0"),
)

# The durable results of running batches in shared mode, one row per request (the first one
# written wins): the exact output or error line, and the tokens it adds to the batch's usage.
batch_results = sa.Table(
    "batch_results",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("idx", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("ok", sa.Boolean(), nullable=False),
    sa.Column("line", sa.LargeBinary(), nullable=False),
    sa.Column("input_tokens", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("cached_tokens", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("output_tokens", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False, server_default="0"),
)

# The live engine processes (shared mode): a heartbeat each, what they run, the models they
# serve. Limits are shared out between the live workers of a model (batchd.engine.shares).
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("started_at", sa.Float(), nullable=False),
    sa.Column("heartbeat_at", sa.Float(), nullable=False),
    sa.Column("info", sa.JSON(), nullable=True),
)

# A model's upstream paused after a 429, for every worker (shared mode).
model_pauses = sa.Table(
    "model_pauses",
    metadata,
    sa.Column("model", sa.String(256), primary_key=True),
    sa.Column("paused_until", sa.Float(), nullable=False),
)

# A replica of a route (one server of its base_urls) ejected by an engine's circuit breaker, for
# every engine (shared mode): until ``open_until``, or until a probe readmits it.
replica_ejections = sa.Table(
    "replica_ejections",
    metadata,
    sa.Column("model", sa.String(256), primary_key=True),
    sa.Column("replica", sa.String(256), primary_key=True),
    sa.Column("open_until", sa.Float(), nullable=False),
)

# Webhook endpoints added with `batchd webhooks add` (those of the config file are not stored):
# the signing secret is kept as given (Standard Webhooks' HMAC needs it), ``events`` NULL for all.
webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("seq", _Seq, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("secret", sa.String(256), nullable=False),
    sa.Column("events", sa.JSON(), nullable=True),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Index("ix_webhook_endpoints_project", "project"),
)

# One webhook message per (event of the outbox, endpoint), created before anything is sent
# (see batchd.store.webhooks): ``id`` is its ``webhook-id``, the same on every attempt and
# replay. Claimed with a lease (shared mode: one process sends it at a time).
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("seq", _Seq, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("endpoint_id", sa.String(64), nullable=False),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("event_seq", sa.BigInteger(), nullable=False),
    sa.Column("event_type", sa.String(32), nullable=False),
    sa.Column("payload", sa.Text(), nullable=False),
    # pending (to send, now or at next_attempt_at), delivered, failed (every attempt failed).
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.Float(), nullable=True),
    sa.Column("last_attempt_at", sa.Float(), nullable=True),
    sa.Column("last_status", sa.Integer(), nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("delivered_at", sa.Float(), nullable=True),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Column("lease_expires_at", sa.Float(), nullable=True),
    sa.Column("lease_epoch", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    sa.Index("ix_webhook_deliveries_batch", "batch_id", "endpoint_id"),
)

# How far the outbox (batch_events) has been fanned out into webhook_deliveries: every event
# with a ``seq`` up to ``seq`` has its deliveries. One row, locked while it advances.
webhook_cursor = sa.Table(
    "webhook_cursor",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("seq", sa.BigInteger(), nullable=False),
)

# ``Idempotency-Key`` of ``POST /v1/files`` and ``POST /v1/batches`` (see batchd.store.idempotency):
# one row per (project, key) for 24 h; ``status_code`` NULL while the first call runs, then its
# answer. ``request`` is the call's method and path, ``digest`` the SHA-256 of its body.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("project", sa.String(128), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request", sa.String(128), nullable=False),
    sa.Column("digest", sa.String(64), nullable=True),
    sa.Column("status_code", sa.Integer(), nullable=True),
    sa.Column("response", sa.Text(), nullable=True),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("expires_at", sa.Float(), nullable=False),
    sa.Index("ix_idempotency_keys_expires", "expires_at"),
)

# The cross-batch result cache (see batchd.store.cache): a stored answer per (project, digest),
# ``digest`` the SHA-256 of the route, the endpoint and the canonical request body; ``response``
# the answer's ``{"status_code", "request_id", "body"}`` as JSON; ``size`` its bytes.
result_cache = sa.Table(
    "result_cache",
    metadata,
    sa.Column("project", sa.String(128), primary_key=True),
    sa.Column("digest", sa.LargeBinary(32), primary_key=True),
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("response", sa.LargeBinary(), nullable=False),
    sa.Column("size", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("expires_at", sa.Float(), nullable=False),
    sa.Index("ix_result_cache_expires", "expires_at"),
)
