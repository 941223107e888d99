"""Two regd replicas on one PostgreSQL database and one storage root: concurrent cold pulls
through both cost the upstream one fetch per blob (the fetch lease), and both serve it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.helpers.clients import Skopeo
from tests.helpers.oci import LayoutImage
from tests.mirror.conftest import mirror_table, seed, start_regd, start_upstream
from tests.mirror.test_pull_through import _blobs_of, _pull_everything

PER_REPLICA = 3


def test_replicas_share_one_fetch_per_blob(
    tmp_path: Path, fresh_pg_url: str, skopeo: Skopeo, multi_image: LayoutImage
) -> None:
    upstream = start_upstream(tmp_path / "upstream")
    replicas = []
    try:
        seed(skopeo, multi_image, upstream, "lib/shared:v1")
        table = mirror_table("up", upstream.url, timeout="30s")
        # Started side by side: each start waits for its process to answer.
        with ThreadPoolExecutor(2) as pool:
            replicas.extend(
                pool.map(
                    lambda n: start_regd(
                        tmp_path / f"regd{n}",
                        table,
                        database_url=fresh_pg_url,
                        data_dir=tmp_path / "data",
                    ),
                    range(2),
                )
            )
        bases = [r.url for r in replicas] * PER_REPLICA
        with ThreadPoolExecutor(len(bases)) as pool:
            results = list(pool.map(lambda b: _pull_everything(b, "up/lib/shared", "v1"), bases))
        blobs = set(_blobs_of(upstream.url, "lib/shared", "v1"))
        for seen in results:
            assert seen["v1"] == multi_image.digest
            assert all(seen[d] == d for d in blobs)
        assert {d: upstream.blob_gets(d) for d in blobs} == dict.fromkeys(blobs, 1)
    finally:
        for replica in replicas:
            replica.stop()
        upstream.stop()
