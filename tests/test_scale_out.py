"""Batches on a Dask cluster of separate worker processes; the flow stays the only ledger writer."""

from __future__ import annotations

import os

import duckdb
import pytest

from sandbox import photos
from tests.fixtures.jobs import local_job

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_escape_runs_its_batches_on_dask_worker_processes(tmp_path):
    from distributed import Client, LocalCluster, get_task_stream

    from photo_escape.stories import STORIES, load_job

    photos.make_collection(tmp_path / "camera", count=12, bad=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        job = local_job(tmp_path, "dask-test",
                        {"batch_size": 5, "task_runner": "dask", "dask_address": cluster.scheduler_address})
        spec = load_job(job)
        with get_task_stream(client) as stream:
            summary = STORIES["escape"].flow_for(spec)(spec.dump())
        workers = {t["worker"] for t in stream.data}
        pids = client.run(os.getpid)
    assert summary["listed"] == 15 and summary["done"] == 12 and summary["failed"] == 3
    # every task of every batch (the fetch; hash, capture time and deliver) ran on the
    # cluster, in worker processes other than this one
    assert len(stream.data) == 3 * 2
    assert workers and workers <= set(pids) and os.getpid() not in pids.values()
    con = duckdb.connect(summary["ledger"], read_only=True)
    delivered = con.execute("SELECT count(*) FROM events WHERE stage = 'deliver' AND outcome = 'ok'").fetchone()[0]
    con.close()
    assert delivered == 12
    assert len([p for p in (tmp_path / "archive").rglob("*") if p.is_file()]) == 12
