"""Noticing that the SQLite file regd writes to is no longer the one at its path.

An open SQLite connection keeps writing to the file it opened, even after that file was
removed or replaced: every commit then lands in an inode nobody will ever open again, and
the pushes acknowledged meanwhile vanish at the next start. Comparing the identity of the
path with the one the writer opened, before each commit, turns that silent loss into
refused writes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("regd.metadata")


class DatabaseFileGone(RuntimeError):
    """The database file at the configured path is not the one regd opened."""


class DatabaseFile:
    """The identity (st_dev, st_ino) of the SQLite file, remembered once and kept."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._identity: tuple[int, int] | None = None
        self._reported = False
        # A worker process starts after the schema was created: the file is there already,
        # and a removal before this process's first write is noticed too.
        self.remember()

    def remember(self) -> None:
        """Note the identity of the file at the path; kept for the life of the process.

        Only the first time counts: once the file is gone, a later connection would create
        a new, empty one at the path, and that one must not become the reference.
        """
        if self._identity is not None:
            return
        try:
            st = os.stat(self.path)
        except OSError:
            return
        self._identity = (st.st_dev, st.st_ino)

    def check(self) -> None:
        """Raise DatabaseFileGone when the path no longer leads to the remembered file."""
        if self._identity is None:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            problem = "was removed"
        except OSError as exc:
            problem = f"cannot be examined ({exc.strerror})"
        else:
            if (st.st_dev, st.st_ino) == self._identity:
                return
            problem = "was replaced by another file"
        message = (
            f"the database file {self.path} {problem} while regd was running; writes are "
            "refused so that no acknowledged change is lost: restore the file or restart regd"
        )
        if not self._reported:
            self._reported = True
            log.error("%s", message)
        raise DatabaseFileGone(message)
