"""The comparison table, its targets, and the JSON file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

Results = dict[str, dict[str, Any]]


def lookup(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


@dataclass(frozen=True)
class Row:
    """One line of the table: a metric read from both servers' results, and its target.

    `target` is `("ratio>=", x)`, `("ratio<=", x)` on regd/reference, or `("regd<=", x)`,
    `("regd<", x)`, `("regd==", x)` on regd's value alone.
    """

    workload: str
    metric: str
    path: tuple[str, ...]
    target: tuple[str, float] | None = None

    def values(self, results: Results) -> tuple[Any, Any]:
        return lookup(results.get("regd"), self.path), lookup(results.get("reference"), self.path)

    def verdict(self, regd: Any, ref: Any) -> tuple[str, str]:
        """(target text, PASS/MISS/n/a)."""
        if self.target is None:
            return "", ""
        op, x = self.target
        if op.startswith("ratio"):
            text = f"{op[5:]} {x:g}x"
            if not isinstance(regd, int | float) or not isinstance(ref, int | float) or not ref:
                return text, "n/a"
            ratio = regd / ref
            ok = ratio >= x if op == "ratio>=" else ratio <= x
        else:
            text = f"{op[4:]} {x:g}"
            if not isinstance(regd, int | float):
                return text, "n/a"
            ok = {"regd<=": regd <= x, "regd<": regd < x, "regd==": regd == x}[op]
        return text, "PASS" if ok else "MISS"


@dataclass(frozen=True)
class Variant:
    """A run with sizes and targets of its own (the object-storage run): `targets` replace
    the ratio target of each workload they name, `labels` rewrite parts of the row labels
    (sizes), and rows no server has a value for are left out."""

    targets: Mapping[str, tuple[str, float]]
    labels: Mapping[str, str] = field(default_factory=dict)

    def adapt(self, row: Row, results: Results) -> Row | None:
        if row.values(results) == (None, None):
            return None
        workload = row.workload
        for old, new in self.labels.items():
            workload = workload.replace(old, new)
        target = row.target
        if row.path[0] in self.targets and target is not None and target[0] == "ratio>=":
            target = self.targets[row.path[0]]
        return replace(row, workload=workload, target=target)


def rows_for(results: Results, variant: Variant | None = None) -> list[Row]:
    rows = _rows(results)
    if variant is None:
        return rows
    return [adapted for row in rows if (adapted := variant.adapt(row, results)) is not None]


def _rows(results: Results) -> list[Row]:
    rows = [
        Row("1 GiB push, monolithic", "MB/s", ("push_monolithic", "mb_s"), ("ratio>=", 2.0)),
        Row("1 GiB push, 16 MiB chunks", "MB/s", ("push_chunked", "mb_s"), ("ratio>=", 2.0)),
        Row("1 GiB pull (hashed)", "MB/s", ("pull", "mb_s"), ("ratio>=", 1.0)),
        Row("1 MiB range reads", "req/s", ("range_read", "req_s")),
        Row("1 MiB range reads", "p99 ms", ("range_read", "p99_ms")),
        Row("small images, 16 clients", "images/s", ("small_images", "images_s"), ("ratio>=", 2.0)),
    ]
    for name, label in (
        ("manifest_head", "manifest HEAD by tag"),
        ("manifest_get", "manifest GET by tag (wrk)"),
        ("blob_head", "blob HEAD"),
    ):
        rows += [
            Row(label, "req/s", (name, "req_s"), ("ratio>=", 1.5)),
            Row(label, "p50 ms", (name, "p50_ms")),
            Row(label, "p99 ms", (name, "p99_ms"), ("ratio<=", 1.0)),
            Row(label, "errors", (name, "errors"), ("regd==", 0)),
        ]
    rows += [
        Row("manifest GET (python loadgen)", "req/s", ("manifest_get_py", "req_s")),
        Row("manifest GET (python loadgen)", "p99 ms", ("manifest_get_py", "p99_ms")),
    ]
    tags_n = lookup(results.get("regd"), ("listings", "tags", "workload", "entries")) or "N"
    cat_n = lookup(results.get("regd"), ("listings", "catalog", "workload", "entries")) or "N"
    lw = ("listings", "tags", "workload")
    cw = ("listings", "catalog", "workload")
    rows += [
        Row(f"tags list, {tags_n} tags, whole", "ms", (*lw, "whole", "ms"), ("ratio<=", 1.0)),
        Row(f"tags list, {tags_n} tags, all pages n=100", "ms", (*lw, "paged", "ms")),
        Row(f"tags list, {tags_n} tags, all pages n=100", "requests", (*lw, "paged", "requests")),
        Row(f"catalog, {cat_n} repos, whole", "ms", (*cw, "whole", "ms"), ("ratio<=", 0.1)),
        Row(f"catalog, {cat_n} repos, whole", "requests", (*cw, "whole", "requests")),
        Row(f"catalog, {cat_n} repos, all pages n=100", "ms", (*cw, "paged", "ms")),
    ]
    sizes = sorted(
        {
            int(k)
            for server in results.values()
            for kind in ("tags", "catalog")
            for k in (lookup(server, ("listings", kind, "growth")) or {})
        }
    )
    for size in sizes:
        for page in ("first_page", "middle_page"):
            where = page.replace("_", " ")
            rows.append(
                Row(
                    f"tags list page n=100 at {size:,}, {where}",
                    "p50 ms",
                    ("listings", "tags", "growth", str(size), page, "p50_ms"),
                    ("regd<", 5.0),
                )
            )
    for size in sizes:
        for page in ("first_page", "middle_page"):
            where = page.replace("_", " ")
            rows.append(
                Row(
                    f"catalog page n=100 at {size:,}, {where}",
                    "p50 ms",
                    ("listings", "catalog", "growth", str(size), page, "p50_ms"),
                )
            )
    rows += [
        Row("mounts of a 64 MiB blob", "mounts/s", ("mounts", "mounts_s"), ("ratio>=", 1.0)),
        Row("mixed 80/20, 32 clients", "ops/s", ("mixed", "ops_s"), ("ratio>=", 1.5)),
        Row("mixed 80/20, 32 clients", "errors", ("mixed", "errors"), ("regd==", 0)),
    ]
    for op, label in (
        ("pull", "pull (manifest + layer)"),
        ("manifest_get", "its manifest GET"),
        ("layer_get", "its layer GET"),
        ("push", "push (small image)"),
    ):
        rows += [
            Row("mixed 80/20, 32 clients", f"{label} p50 ms", ("mixed", f"{op}_p50_ms")),
            Row("mixed 80/20, 32 clients", f"{label} p99 ms", ("mixed", f"{op}_p99_ms")),
        ]
    # The concurrency sweep: the knee of each server's latency, errors and memory under it.
    knee_metrics = {
        "manifest_get": ("manifest GET (wrk)", "req/s", "req_s", ("p50_ms", "p99_ms")),
        "mixed": (
            "mixed 80/20",
            "ops/s",
            "ops_s",
            ("pull_p50_ms", "pull_p99_ms", "push_p50_ms", "push_p99_ms"),
        ),
    }
    for clients in lookup(results.get("regd"), ("knee", "clients")) or ():
        for load, (label, unit, rate_key, latencies) in knee_metrics.items():
            key = ("knee", f"{load}_{clients}")
            where = f"{label}, {clients} clients"
            rows.append(Row(where, unit, (*key, rate_key)))
            rows += [
                Row(where, f.replace("_ms", " ms").replace("_", " "), (*key, f)) for f in latencies
            ]
            rows += [
                Row(where, "errors", (*key, "errors"), ("regd==", 0)),
                Row(where, "RSS peak, all processes MiB", (*key, "server_rss_peak_mib")),
            ]
    rows += [
        Row(
            "peak RSS, largest worker",
            "MiB",
            ("totals", "peak_rss_max_worker_mib"),
            ("regd<=", 150),
        ),
        Row("token issue (regd's token service)", "tokens/s", ("token_issue", "tokens_s")),
        Row("token issue (regd's token service)", "p99 ms", ("token_issue", "p99_ms")),
        Row("peak RSS, all processes", "MiB", ("totals", "peak_rss_sum_mib")),
        Row("server CPU, whole run", "s", ("totals", "cpu_s")),
    ]
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:,.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def comparison(
    results: Results, title: str, variant: Variant | None = None
) -> tuple[Table, list[dict[str, Any]]]:
    table = Table(title=title, show_lines=False)
    for col, justify in (
        ("workload", "left"),
        ("metric", "left"),
        ("regd", "right"),
        ("reference", "right"),
        ("regd/ref", "right"),
        ("target", "left"),
        ("result", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    verdicts = []
    for row in rows_for(results, variant):
        regd, ref = row.values(results)
        ratio = (
            regd / ref
            if isinstance(regd, int | float) and isinstance(ref, int | float) and ref
            else None
        )
        target, result = row.verdict(regd, ref)
        style = {"PASS": "green", "MISS": "red"}.get(result, "")
        table.add_row(
            row.workload,
            row.metric,
            _fmt(regd),
            _fmt(ref),
            f"{ratio:.2f}x" if ratio is not None else "-",
            target,
            f"[{style}]{result}[/{style}]" if style else result,
        )
        verdicts.append(
            {
                "workload": row.workload,
                "metric": row.metric,
                "regd": regd,
                "reference": ref,
                "ratio": round(ratio, 3) if ratio is not None else None,
                "target": target,
                "result": result,
            }
        )
    return table, verdicts


COST_COLUMNS = (
    "workload",
    "server",
    "wall s",
    "server CPU s",
    "server cores",
    "loadgen CPU s",
    "loadgen % core",
    "machine busy cores",
    "peak RSS MiB",
)


def costs(results: Results) -> Table:
    """Per workload: server CPU and cores, load generator CPU, whole-machine busy cores."""
    table = Table(title="CPU per workload (server = the registry's process tree)")
    for col in COST_COLUMNS:
        table.add_column(col, justify="left" if col in ("workload", "server") else "right")
    names = [k for k in next(iter(results.values()), {}) if k != "totals"]
    for name in names:
        for server, data in results.items():
            w = data.get(name) or {}
            s = w.get("server", {})
            table.add_row(
                name,
                server,
                _fmt(s.get("wall_s")),
                _fmt(s.get("cpu_s")),
                _fmt(s.get("cores")),
                _fmt(w.get("client_cpu_s")),
                _fmt(w.get("client_cpu_pct_of_one_core")),
                _fmt(s.get("machine_busy_cores")),
                _fmt(lookup(s, ("memory", "peak_rss_max_worker_mib"))),
            )
    return table


def notes(results: Results) -> list[str]:
    out = []
    for server, data in results.items():
        mode = lookup(data, ("push_monolithic", "mode"))
        if mode:
            out.append(f"{server}: monolithic push = {mode}")
        for kind in ("tags", "catalog"):
            for size, g in (lookup(data, ("listings", kind, "growth")) or {}).items():
                out.append(f"{server}: {kind} at {int(size):,}: {g.get('paging')}")
        for skipped in lookup(data, ("listings", "population", "skipped")) or []:
            out.append(f"{server}: skipped {skipped}")
        for name, w in data.items():
            if isinstance(w, dict) and "error" in w:
                out.append(f"{server}: {name} failed: {w['error']}")
    return out


def render(
    console: Console,
    results: Results,
    title: str,
    variant: Variant | None = None,
) -> list[dict[str, Any]]:
    table, verdicts = comparison(results, title, variant)
    console.print(table)
    console.print(costs(results))
    for line in notes(results):
        console.print(f"- {line}", highlight=False)
    return verdicts


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
