"""Tag lookups reach the tag through the tags' key (repository_id, name), read from the
database's own query plan: with many tags on few manifests, a plan that reaches tags
through their manifest visits every tag of each manifest (100,000 rows for one GET)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import event

from regd.metadata import MetadataStore, NewManifest
from regd.metadata import browse as browse_rows
from regd.metadata.engine import DriverStatement
from tests.helpers.store import new_manifest

REPO = "many/tags"
# Enough tags per manifest that a plan through the manifests' side has something to visit.
TAGS = 600
MANIFESTS = 2


@pytest.fixture
async def many_tags(store: MetadataStore) -> list[NewManifest]:
    manifests = [new_manifest(f'{{"n":{i}}}'.encode()) for i in range(MANIFESTS)]
    for i, m in enumerate(manifests):
        names = [f"t{i}-{n:05d}" for n in range(TAGS)]
        await store.put_manifest(REPO, m, names)
    if store.dialect == "postgresql":
        # The statistics autovacuum gathers on a live database: without them PostgreSQL
        # takes fresh tables for a few pages and scans them whole.
        with store.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    return manifests


def _statements(store: MetadataStore) -> tuple[list[tuple[str, Any]], Callable[[], None]]:
    """Every statement the store sends from now on (SQL and parameters), through
    SQLAlchemy or on the driver's cursor, and a function that stops recording."""
    seen: list[tuple[str, Any]] = []

    def record(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if not many:
            seen.append((statement, parameters))

    driver_rows = DriverStatement.rows_on

    def record_driver(self: DriverStatement, driver: Any, params: Any) -> Any:
        seen.append((self.sql, self._values(params)))
        return driver_rows(self, driver, params)

    def stop() -> None:
        event.remove(store.engine, "before_cursor_execute", record)
        DriverStatement.rows_on = driver_rows  # type: ignore[method-assign]

    event.listen(store.engine, "before_cursor_execute", record)
    DriverStatement.rows_on = record_driver  # type: ignore[method-assign]
    return seen, stop


def _plan(store: MetadataStore, statement: str, parameters: Any) -> str:
    prefix = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(prefix + statement, parameters).all()
    # SQLite: (id, parent, notused, detail); PostgreSQL: one line of text per row.
    return "\n".join(str(row[-1]) for row in rows)


def _by_key(store: MetadataStore, plan: str) -> bool:
    """Whether the plan reads tags through their primary key, by repository and name."""
    if store.dialect == "sqlite":
        return "sqlite_autoindex_tags_1 (repository_id=? AND name=?)" in plan
    return "tags_pkey" in plan and "name)::text =" in plan


async def _tag_plans(store: MetadataStore, operation: Awaitable[object]) -> list[str]:
    """The plans of the statements `operation` sends that read or change tags."""
    seen, stop = _statements(store)
    try:
        await operation
    finally:
        stop()
    plans = [_plan(store, sql, params) for sql, params in seen if "tags" in sql]
    assert plans, "the operation sent no statement about tags"
    return plans


@pytest.mark.parametrize("with_payload", [True, False], ids=["GET", "HEAD"])
async def test_manifest_by_tag_reads_the_tag_by_its_key(
    store: MetadataStore, many_tags: list[NewManifest], with_payload: bool
) -> None:
    tag = f"t1-{TAGS // 2:05d}"
    seen, stop = _statements(store)
    try:
        info = await store.get_manifest(REPO, tag=tag, with_payload=with_payload)
    finally:
        stop()
    assert info is not None
    assert info.digest == many_tags[1].digest
    (plan,) = [_plan(store, sql, params) for sql, params in seen if "tags" in sql]
    assert _by_key(store, plan), plan
    assert "tags_manifest" not in plan, plan


async def test_other_tag_lookups_read_the_tag_by_its_key(
    store: MetadataStore, many_tags: list[NewManifest]
) -> None:
    operations: dict[str, Awaitable[object]] = {
        "UI tag digest": browse_rows.tag_digest(store, REPO, "t0-00007"),
        "tag deletion": store.delete_tag(REPO, "t0-00008"),
        "tags deletion": store.delete_tags(REPO, ["t0-00009", "t1-00009"]),
    }
    for name, operation in operations.items():
        for plan in await _tag_plans(store, operation):
            assert _by_key(store, plan), f"{name}:\n{plan}"
            assert "tags_manifest" not in plan, f"{name}:\n{plan}"
    assert await store.get_manifest(REPO, tag="t0-00008") is None
    assert await store.get_manifest(REPO, tag="t1-00009") is None
