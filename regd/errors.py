"""The one exception hierarchy of regd.

    RegdError
    ├── ConfigError                 bad configuration, found at start-up
    ├── BackendError                storage or database failed: not the client's fault (503)
    │   ├── StorageError            (regd.storage) a driver failed; PathNotFound, InvalidPath, ...
    │   └── MetadataError           (regd.metadata) the database failed or refused
    └── RegistryError               a request the registry refuses, with its OCI error code
        ├── BlobUnknown, BlobUploadUnknown, ManifestUnknown, NameUnknown      (not found)
        ├── DigestInvalid, NameInvalid, ManifestInvalid, ManifestBlobUnknown,
        │   BlobUploadInvalid, SizeInvalid, TagInvalid, PaginationInvalid      (bad input)
        ├── RangeInvalid            a chunk that does not continue the upload (416)
        ├── ManifestTooLarge        (413)
        ├── TooManyRequests         a bound on open upload sessions is reached (429)
        ├── Denied                  not allowed (403); QuotaExceeded: a storage quota is full
        └── Unsupported             a feature the registry does not offer
            └── ReadOnlyMode        a write during maintenance mode (405)

The API layer maps each RegistryError subclass to its HTTP status in one table
(`regd.api.errors`); nothing below the API knows about HTTP.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RegdError(Exception):
    """Base of every error regd raises on purpose."""


class ConfigError(RegdError):
    pass


class StartupError(RegdError):
    """Serving cannot start: the address, the data directory or the database is unusable."""


class BackendError(RegdError):
    """Storage or the database failed; the client is told to try again.

    Both lower layers raise subclasses of this, so the API answers every backend failure
    the same way without knowing which layer it came from. `kind` names the part that
    failed in the answer's message; `retry_after` is the seconds a client should wait.
    """

    kind: ClassVar[str] = "backend"
    retry_after: ClassVar[int] = 5


class RegistryError(RegdError):
    code: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        # Headers the answer carries besides the common ones (a 401's WWW-Authenticate).
        self.headers: dict[str, str] = {}


class BlobUnknown(RegistryError):
    code = "BLOB_UNKNOWN"


class BlobUploadUnknown(RegistryError):
    code = "BLOB_UPLOAD_UNKNOWN"


class BlobUploadInvalid(RegistryError):
    code = "BLOB_UPLOAD_INVALID"


class RangeInvalid(BlobUploadInvalid):
    """A chunk that does not start where the upload ends; the session stays usable."""

    def __init__(self, message: str, current_size: int) -> None:
        super().__init__(message, {"size": current_size})
        self.current_size = current_size


class DigestInvalid(RegistryError):
    code = "DIGEST_INVALID"


class ManifestBlobUnknown(RegistryError):
    code = "MANIFEST_BLOB_UNKNOWN"


class ManifestInvalid(RegistryError):
    code = "MANIFEST_INVALID"


class ManifestTooLarge(ManifestInvalid):
    pass


class ManifestUnknown(RegistryError):
    code = "MANIFEST_UNKNOWN"


class NameInvalid(RegistryError):
    code = "NAME_INVALID"


class NameUnknown(RegistryError):
    code = "NAME_UNKNOWN"


class SizeInvalid(RegistryError):
    code = "SIZE_INVALID"


class TagInvalid(RegistryError):
    # The spec's code table has no tag code; a bad tag fails the manifest push's checks.
    code = "MANIFEST_INVALID"


class PaginationInvalid(RegistryError):
    # The spec's code table has no paging code; UNSUPPORTED covers "an invalid set of
    # parameters".
    code = "UNSUPPORTED"


class Unsupported(RegistryError):
    """A feature or option the registry does not offer (400)."""

    code = "UNSUPPORTED"


class Denied(RegistryError):
    code = "DENIED"


class QuotaExceeded(Denied):
    """A push that would take a group of repositories past its storage quota (403)."""


class ReadOnlyMode(Unsupported):
    """A write while the registry is in maintenance mode: answered, as Distribution's
    read-only mode answers it, 405 with `Allow: GET, HEAD`."""

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message, detail)
        self.headers["allow"] = "GET, HEAD"


class Unauthorized(RegistryError):
    code = "UNAUTHORIZED"


class Conflict(RegistryError):
    """The operation cannot run now because another one holds what it needs (409)."""

    # The spec's code table has no conflict code; TOOMANYREQUESTS is its "not now, try
    # again later" (DENIED would read as a permissions problem).
    code = "TOOMANYREQUESTS"


class TooManyRequests(RegistryError):
    """A bound on what clients may hold open (upload sessions) is reached; the API answers
    429 with Retry-After."""

    code = "TOOMANYREQUESTS"
    # Seconds a client should wait before it tries again.
    retry_after: ClassVar[int] = 10
