"""Which repositories are mirrored, by which upstream, under which upstream name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from regd.config import MirrorConfig
from regd.errors import Denied


@dataclass(frozen=True, slots=True)
class Route:
    """A repository of regd served from `mirror`'s upstream as `upstream_repository`."""

    mirror: MirrorConfig
    repository: str
    upstream_repository: str
    # Under the mirror's prefix (nothing but cache), or a miss sent to the default mirror
    # in a namespace that also takes pushes.
    prefixed: bool


class Routes:
    def __init__(self, mirrors: Sequence[MirrorConfig]) -> None:
        # Longest prefix first, so `ghcr.io/org` wins over `ghcr.io`.
        self._mirrors = sorted(mirrors, key=lambda m: len(m.prefix), reverse=True)
        self._default = next((m for m in mirrors if m.default), None)

    def __bool__(self) -> bool:
        return bool(self._mirrors)

    @property
    def mirrors(self) -> tuple[MirrorConfig, ...]:
        return tuple(self._mirrors)

    def find(self, repository: str) -> Route | None:
        for mirror in self._mirrors:
            if repository.startswith(mirror.prefix + "/"):
                rest = repository[len(mirror.prefix) + 1 :]
                return Route(mirror, repository, _docker_hub_name(mirror, rest), True)
        if self._default is not None:
            upstream_name = _docker_hub_name(self._default, repository)
            return Route(self._default, repository, upstream_name, False)
        return None

    def refuse_push(self, repository: str) -> None:
        """Content under a mirror's prefix comes from its upstream only."""
        for mirror in self._mirrors:
            if repository == mirror.prefix or repository.startswith(mirror.prefix + "/"):
                raise Denied(
                    f"repository {repository} is a read-only mirror of {mirror.upstream} "
                    f"(mirror {mirror.prefix}); push it to the upstream or to another name",
                    {"repository": repository, "mirror": mirror.prefix},
                )


def _docker_hub_name(mirror: MirrorConfig, repository: str) -> str:
    """Docker Hub keeps official images under `library/`; docker and containerd ask a
    registry mirror for `library/alpine`, but a person may write `alpine`."""
    if "/" not in repository and mirror.upstream.endswith("docker.io"):
        return f"library/{repository}"
    return repository
