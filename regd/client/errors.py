"""Everything the registry client raises: its own hierarchy, apart from regd.errors (which
is what the daemon answers with).

    ClientError                   any failure talking to a registry
    ├── ConnectError              the registry could not be reached at all
    ├── ResponseError             the registry answered with an HTTP error
    │   ├── AuthError             401/403, or credentials/tokens were refused
    │   ├── NotFoundError         404: repository, manifest, tag or blob unknown
    │   └── UnsupportedError      the registry does not offer this operation
    ├── DigestMismatchError       content does not hash to the digest it was asked for
    └── ProtocolError             an answer the client cannot make sense of

Callers that only want one line for a person use ``str(error)``: it always names the URL
and, for HTTP errors, the status and the registry's error code.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error the registry client raises."""


class ConnectError(ClientError):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.url = url
        self.reason = reason


class ResponseError(ClientError):
    """The registry answered, but not with success."""

    def __init__(
        self,
        method: str,
        url: str,
        status: int,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.code = code
        self.detail = message
        text = f"{method} {url}: HTTP {status}"
        if code:
            text += f" {code}"
        if message:
            text += f": {message}"
        super().__init__(text)


class AuthError(ResponseError):
    """Missing, wrong or insufficient credentials."""


class NotFoundError(ResponseError):
    """The repository, manifest, tag or blob does not exist."""


class UnsupportedError(ResponseError):
    """The registry does not implement or allow this operation (e.g. deletion)."""


class DigestMismatchError(ClientError):
    def __init__(self, where: str, expected: str, actual: str) -> None:
        super().__init__(f"{where}: content has digest {actual}, expected {expected}")
        self.expected = expected
        self.actual = actual


class ProtocolError(ClientError):
    """An answer that breaks the distribution protocol (bad headers, bad JSON...)."""
