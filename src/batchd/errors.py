"""The exception tree of batchd.

Every error a client can cause is a :class:`BatchdError`; each subclass maps to one HTTP status and
one OpenAI error envelope ``{"error": {"message", "type", "param", "code"}}``. The class
docstring is the default message.

    BatchdError
    ├── APIError                      (HTTP errors; rendered by batchd.api.errors)
    │   ├── InvalidRequest            400 invalid_request_error
    │   ├── NotFound                  404 invalid_request_error
    │   ├── Conflict                  409 invalid_request_error
    │   ├── PayloadTooLarge           413 invalid_request_error
    │   └── ServiceUnavailable        503 server_error
    ├── ConfigError                   bad settings or config file (raised at startup)
    ├── DataDirLocked                 another process serves the same data directory
    ├── StoreError                    the metadata store failed (foreign exceptions translated)
    └── JournalError                  a batch's result journal cannot be used (engine.journal)
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "APIError",
    "BadGateway",
    "BatchdError",
    "ConfigError",
    "Conflict",
    "DataDirLocked",
    "GatewayTimeout",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "StoreError",
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
