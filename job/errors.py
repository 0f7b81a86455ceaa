"""Every error model-sync raises on purpose, and the exit code each one means.

```
ModelSyncError                 .exit_code = 1; str() is the one-line message a user sees
├── ConfigError                bad or missing settings, credential files or metadata (exit 2, before any network call)
├── SourceError                reading the model failed           (.uri, .path)
│   ├── SourceNotFound
│   └── SourceAuthError
├── DestinationError           writing the model failed           (.uri, .path)
│   ├── DestinationAuthError
│   └── UploadRejected         the server refused the bytes       (.status, .code, .detail)
├── IntegrityError             size or digest mismatch; never retried
├── ModelRegistryError         the registry answered an error     (.status, .code, .message)
└── Terminated                 SIGTERM arrived (node drain, Job deletion)
```

Library exceptions are mapped once, at the backend boundary, with ``raise ... from exc``. Messages follow
"doing what, to which object: cause" and never carry credentials, ``Authorization`` headers or query strings.
Whether an error is worth retrying is decided by a function in ``job.retry``, not by this tree; the mapping
records what it saw on the error it returns (``retryable``, ``retry_after``), since the library exception that
told (a reset connection, a 503 with ``Retry-After``) is only its ``__cause__`` afterwards.
"""

from __future__ import annotations


class ModelSyncError(Exception):
    """Base of all expected errors: printed as one line, no traceback."""

    exit_code: int = 1
    retryable: bool | None = None
    """Set where a library exception is mapped: True for a transport failure, 408, 429, 5xx or S3 SlowDown,
    False for what would fail again. None: not known here; ``job.retry.is_retryable`` then looks at
    ``status`` (if any) and otherwise says no."""
    retry_after: float | None = None
    """Seconds the server asked us to wait (its ``Retry-After``), when it said."""
    consequence: str | None = None
    """What the failure left behind that the user must know (an artifact still PENDING), shown after the cause."""

    def __str__(self) -> str:
        # One line, whatever the cause carried in: a multi-line server body must not break the
        # termination message or a log pipeline's line framing.
        text = " ".join(super().__str__().split())
        return f"{text}; {self.consequence}" if self.consequence else text


class ConfigError(ModelSyncError):
    """The configuration itself is wrong: no server was contacted."""

    exit_code = 2


class SourceError(ModelSyncError):
    """Reading from the source failed."""

    def __init__(self, message: str, *, uri: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri
        self.path = path


class SourceNotFound(SourceError):
    """The source object, prefix, image or file does not exist."""


class SourceAuthError(SourceError):
    """The source refused our credentials."""


class DestinationError(ModelSyncError):
    """Writing to the destination failed."""

    def __init__(self, message: str, *, uri: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri
        self.path = path


class DestinationAuthError(DestinationError):
    """The destination refused our credentials."""


class UploadRejected(DestinationError):
    """The destination answered the upload with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        detail: str | None = None,
        uri: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message, uri=uri, path=path)
        self.status = status
        self.code = code
        self.detail = detail


class IntegrityError(ModelSyncError):
    """Bytes read or written do not match the size or digest they must have. Never retried."""

    retryable = False


class ModelRegistryError(ModelSyncError):
    """The Model Registry answered with an error (its ``{code, message}`` body is in the message)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Terminated(ModelSyncError):
    """The pod was asked to stop (SIGTERM) while the job was running."""

    exit_code = 143
