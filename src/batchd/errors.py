"""The exception tree of batchd.

Every error a client can cause is a :class:`BatchdError`; each :class:`APIError` maps to one HTTP
status and one OpenAI error envelope ``{"error": {"message", "type", "param", "code"}}``. The
class docstring is the default message. Every exception class of batchd is drawn here; one
defined in another module names that module (relative to ``batchd``).

    BatchdError
    ├── APIError                      (HTTP errors; rendered by batchd.api.errors)
    │   ├── InvalidRequest            400 invalid_request_error
    │   │   └── ApiVersionError       400 in Azure's shape: a missing or unknown api-version
    │   │                             (api.azure)
    │   ├── Unauthorized              401 invalid_request_error
    │   ├── NotFound                  404 invalid_request_error
    │   ├── Conflict                  409 invalid_request_error
    │   ├── PayloadTooLarge           413 invalid_request_error
    │   ├── RateLimited               429 requests (with Retry-After)
    │   ├── BadGateway                502 server_error
    │   ├── ServiceUnavailable        503 server_error
    │   └── GatewayTimeout            504 server_error
    ├── ConfigError                   bad settings or config file (raised at startup)
    ├── DataDirLocked                 another process serves the same data directory
    ├── StoreError                    the metadata store failed (foreign exceptions translated)
    ├── LimitReached                  a project limit, checked in the store with the write
    │   ├── BatchLimitReached         max_active_batches or max_batches_per_hour
    │   ├── TokenQuotaExceeded        the project's enqueued-token limit
    │   └── StorageQuotaExceeded      max_stored_bytes
    ├── StorageFault                  the data cannot be written now (the work waits)
    │   ├── StorageFull               no space left
    │   ├── StorageReadOnly           read-only
    │   └── StorageUnreachable        the object store (S3) does not answer
    ├── ProviderError                 a provider failed; handled in the provider or the API
    │   ├── RequestError              a request llama.cpp cannot serve: its 400 error line
    │   │                             (providers.llamacpp_params)
    │   ├── LoadError                 llama.cpp cannot load the model (providers.llamacpp_decode)
    │   └── ProviderStreamError       a stream broke after it started (providers.base)
    ├── IllegalTransition             a status change the lifecycle forbids (core.lifecycle)
    ├── RequestIndexError             a request index cannot be read (core.request_index)
    ├── JournalError                  a batch's result journal cannot be used (engine.journal)
    ├── LeaseLost                     another engine took a range or batch over: this one
    │                                 writes nothing more to it (store.work)
    ├── RunError                      `batchd run` cannot start or go on (localrun)
    └── TableError                    a table, template or results file of `batchd prepare` or
                                      `batchd join` cannot be used (tabular.formats)

Four are not BatchdErrors: signals caught where they are raised and turned into one of the
above or into a request's result, never shown as they are:

    Exception
    ├── BlobTooLarge                  a blob writer's size limit: PayloadTooLarge or RunError
    │                                 (storage.base)
    ├── MessagesParamError            a Messages request (or route) that cannot be translated
    │                                 to chat completions: its 400 (providers.messages)
    ├── _Aborted                      aborts a multipart upload from its source (storage.s3)
    └── _Invalid                      one embeddings request refused: its 400 result
                                      (providers.sentence_transformers)
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "APIError",
    "BadGateway",
    "BatchLimitReached",
    "BatchdError",
    "ConfigError",
    "Conflict",
    "DataDirLocked",
    "GatewayTimeout",
    "InvalidRequest",
    "LimitReached",
    "NotFound",
    "PayloadTooLarge",
    "ProviderError",
    "RateLimited",
    "ServiceUnavailable",
    "StorageFault",
    "StorageFull",
    "StorageQuotaExceeded",
    "StorageReadOnly",
    "StorageUnreachable",
    "StoreError",
    "TokenQuotaExceeded",
    "Unauthorized",
]


class BatchdError(Exception):
    """An error in batchd."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        super().__init__(self.message)


class ConfigError(BatchdError):
    """The configuration is not valid."""


class DataDirLocked(BatchdError):
    """Another batchd process is already serving this data directory."""


class StoreError(BatchdError):
    """The metadata store failed."""

    fault: str | None = None
    """The :attr:`StorageFault.reason` when the store's disk is the cause (full, read-only)."""


class ProviderError(BatchdError):
    """A provider could not do what was asked."""


class APIError(BatchdError):
    """The request could not be served."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"

    def __init__(
        self,
        message: str | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.param = param
        self.code = code
        self.headers = headers or {}

    def envelope(self) -> dict[str, dict[str, str | None]]:
        """The OpenAI error envelope, all four keys present."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(APIError):
    """The request is not valid."""

    status_code = 400
    error_type = "invalid_request_error"


class Unauthorized(APIError):
    """No API key, or one batchd does not know."""

    status_code = 401
    error_type = "invalid_request_error"


class NotFound(APIError):
    """The requested object does not exist."""

    status_code = 404
    error_type = "invalid_request_error"


class Conflict(APIError):
    """The request conflicts with the object's current state."""

    status_code = 409
    error_type = "invalid_request_error"


class RateLimited(APIError):
    """Too many requests of this kind for now; ``Retry-After`` says when to try again."""

    status_code = 429
    error_type = "requests"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(
            message,
            code="rate_limit_exceeded",
            headers={"retry-after": str(max(1, retry_after))},
        )


class PayloadTooLarge(APIError):
    """The request body is larger than this server accepts."""

    status_code = 413
    error_type = "invalid_request_error"


class BadGateway(APIError):
    """The upstream of a model could not give an answer."""

    status_code = 502
    error_type = "server_error"


class GatewayTimeout(APIError):
    """The upstream of a model did not answer in time."""

    status_code = 504
    error_type = "server_error"


class ServiceUnavailable(APIError):
    """The server is not ready to serve this request; try again shortly."""

    status_code = 503
    error_type = "server_error"


# -- limits checked in the store -------------------------------------------------------------


class LimitReached(BatchdError):
    """A project limit refused the operation (checked in the store, in the same transaction as
    the write it guards, so that concurrent requests cannot all pass)."""


class BatchLimitReached(LimitReached):
    """The project may not create another batch now (``max_active_batches`` or
    ``max_batches_per_hour``)."""

    def __init__(
        self, which: str, *, limit: int, active: int, created_since: int, oldest: int | None
    ) -> None:
        super().__init__(f"batch limit {which} = {limit} reached")
        self.which = which
        self.limit = limit
        self.active = active
        self.created_since = created_since
        self.oldest = oldest


class TokenQuotaExceeded(LimitReached):
    """The batch's estimated tokens would take its project past its enqueued-token limit."""

    def __init__(self, *, queued: int) -> None:
        super().__init__(f"enqueued-token limit reached ({queued} tokens enqueued)")
        self.queued = queued


class StorageQuotaExceeded(LimitReached):
    """The file would take its project past ``max_stored_bytes``."""

    def __init__(self, *, used: int) -> None:
        super().__init__(f"stored-bytes limit reached ({used} bytes stored)")
        self.used = used


# -- storage faults ----------------------------------------------------------------------------


class StorageFault(BatchdError):
    """The data directory (or bucket) cannot be written now: full, read-only, failing. The
    work that hit it waits and resumes once the fault is gone; nothing half-written counts."""

    reason: ClassVar[str] = "storage_unavailable"


class StorageFull(StorageFault):
    """No space is left where batchd keeps its data."""

    reason = "storage_full"


class StorageReadOnly(StorageFault):
    """Where batchd keeps its data is read-only."""

    reason = "storage_read_only"


class StorageUnreachable(StorageFault):
    """The object store where batchd keeps its files does not answer: the connection failed,
    timed out, or the store answered with a server error (5xx) after the retries."""

    reason = "storage_unreachable"
