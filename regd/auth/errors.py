"""The errors of regd.auth; the HTTP edge maps each to one answer.

    AuthError(RegdError)
    ├── Unauthenticated     401 UNAUTHORIZED + a challenge: no, wrong or unusable credentials
    ├── Forbidden           403 DENIED: the caller is known but may not do this
    │   └── InvalidScope    a token request with a malformed or excessive scope list
    └── Throttled           429 TOOMANYREQUESTS + Retry-After: too many failed logins

Configuration mistakes (a policy rule, an htpasswd line, a trusted issuer) are
`regd.errors.ConfigError`, raised at start-up with one line naming the place.
"""

from __future__ import annotations

from regd.errors import RegdError


class AuthError(RegdError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthenticated(AuthError):
    """The request carries no usable credentials. `error` is the challenge's error
    parameter (`invalid_token` for a token that failed verification), else None."""

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error


class Forbidden(AuthError):
    pass


class InvalidScope(Forbidden):
    pass


class Throttled(AuthError):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
