"""Image references as docker spells them: `[host[:port]/]repo[:tag][@digest]`."""

from __future__ import annotations

from dataclasses import dataclass

from regd.oci.digest import Digest, DigestError
from regd.oci.names import is_valid_repository, is_valid_tag


class ReferenceError_(ValueError):
    """A reference string cannot be parsed."""


@dataclass(frozen=True, slots=True)
class Reference:
    host: str | None
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def identifier(self) -> str:
        """What goes after `/manifests/`: the digest when both are known."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag or "latest"

    def with_host(self, host: str) -> Reference:
        return Reference(host, self.repository, self.tag, self.digest)

    def __str__(self) -> str:
        out = f"{self.host}/{self.repository}" if self.host else self.repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def _looks_like_host(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def parse_reference(text: str, *, require_repository: bool = True) -> Reference:
    """Parse a reference; a missing host stays None for the caller to default."""
    if not text or any(c.isspace() for c in text):
        raise ReferenceError_(f"invalid reference {text!r}")
    rest, _, raw_digest = text.partition("@")
    digest: Digest | None = None
    if raw_digest:
        try:
            digest = Digest.parse(raw_digest)
        except DigestError as exc:
            raise ReferenceError_(f"invalid reference {text!r}: {exc}") from None
    elif text.endswith("@"):
        raise ReferenceError_(f"invalid reference {text!r}: empty digest")

    host: str | None = None
    first, sep, remainder = rest.partition("/")
    if sep and _looks_like_host(first):
        host, rest = first, remainder
    elif not sep and _looks_like_host(first) and not require_repository:
        return Reference(first, "", None, None)

    tag: str | None = None
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not is_valid_tag(tag):
            raise ReferenceError_(f"invalid reference {text!r}: bad tag {tag!r}")
    if not rest and not require_repository:
        return Reference(host, "", tag, digest)
    if not is_valid_repository(rest):
        raise ReferenceError_(
            f"invalid reference {text!r}: repository {rest!r} must be lowercase "
            "[a-z0-9._-] components separated by '/'"
        )
    return Reference(host, rest, tag, digest)
