"""Listings: the catalog of repositories and a repository's tags, in pages."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, select

from regd.metadata import schema as t
from regd.metadata.engine import Database
from regd.metadata.records import MetadataError, Page, TagInfo


class Listings(Database):
    def _prepare(self) -> None:
        super()._prepare()
        # Listing statements compiled for the driver, by shape (see _page).
        self._listings: dict[tuple[str, bool, bool], Any] = {}

    async def repository_exists(self, name: str) -> bool:
        return await self.run_read(lambda c: self._repo_id(c, name) is not None)

    async def list_repositories(self, last: str | None, limit: int | None) -> Page:
        def q(conn: Connection) -> Page:
            stmt = select(t.repositories.c.name).order_by(t.repositories.c.name)
            if last is not None:
                stmt = stmt.where(t.repositories.c.name > bindparam("last"))
            return self._page(conn, ("catalog", last is not None), stmt, {"last": last}, limit)

        return await self.run_read(q)

    async def list_tags(self, repository: str, last: str | None, limit: int | None) -> Page | None:
        """A page of tag names in lexical order; None when the repository is unknown."""

        def q(conn: Connection) -> Page | None:
            repo_id = self._repo_id(conn, repository)
            if repo_id is None:
                return None
            stmt = (
                select(t.tags.c.name)
                .where(t.tags.c.repository_id == bindparam("repo_id"))
                .order_by(t.tags.c.name)
            )
            if last is not None:
                stmt = stmt.where(t.tags.c.name > bindparam("last"))
            params = {"repo_id": repo_id, "last": last}
            return self._page(conn, ("tags", last is not None), stmt, params, limit)

        return await self.run_read(q)

    async def tag_details(self, repository: str) -> list[TagInfo] | None:
        def q(conn: Connection) -> list[TagInfo] | None:
            repo_id = self._repo_id(conn, repository)
            if repo_id is None:
                return None
            rows = conn.execute(
                select(
                    t.tags.c.name,
                    t.manifests.c.digest,
                    t.manifests.c.media_type,
                    t.manifests.c.size,
                    t.tags.c.updated_at,
                )
                .select_from(t.tags.join(t.manifests, t.manifests.c.id == t.tags.c.manifest_id))
                .where(t.tags.c.repository_id == repo_id)
                .order_by(t.tags.c.name)
            )
            return [TagInfo(*row) for row in rows]

        return await self.run_read(q)

    def _page(
        self,
        conn: Connection,
        key: tuple[str, bool],
        stmt: Any,
        params: dict[str, Any],
        limit: int | None,
    ) -> Page:
        """One page of a listing: the first column of `stmt`, at most `limit` rows.

        Listings can be long (a whole tag list of thousands), and SQLAlchemy's result
        rows cost twice what the query does; so the statement is compiled once per
        shape (`key`) and its rows read from the driver's cursor directly.
        """
        if limit is not None:
            stmt = stmt.limit(bindparam("limit"))
            params = {**params, "limit": limit + 1}
        shape = (*key, limit is not None)
        compiled = self._listings.get(shape)
        if compiled is None:
            compiled = self._listings[shape] = stmt.compile(dialect=self.engine.dialect)
        # With the statement's own parameters too (a dialect may add some, as an OFFSET).
        values: Any = compiled.construct_params(params)
        if compiled.positiontup is not None:
            values = [values[name] for name in compiled.positiontup]
        driver = conn.connection.dbapi_connection
        assert driver is not None
        cursor = driver.cursor()
        try:
            cursor.execute(compiled.string, values)
            names = [row[0] for row in cursor.fetchall()]
        except self._dbapi_error as exc:
            raise MetadataError(f"database error: {exc}") from exc
        finally:
            cursor.close()
        if limit is not None and len(names) > limit:
            return Page(names[:limit], more=True)
        return Page(names, more=False)
