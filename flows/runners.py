"""Which Prefect task runner a job's batches run on: threads here, or a Dask cluster."""

from __future__ import annotations

from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner


def task_runner_for(options: Any) -> Any:
    """The task runner a job asks for: threads in this process, or a Dask cluster.

    ``options.task_runner: dask`` with ``dask_address`` runs batches on that cluster;
    without an address a local cluster of ``dask_workers`` separate worker processes
    is started for the run. Either way the flow stays the ledger's only writer.
    """
    if options.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if options.dask_address:
            return DaskTaskRunner(address=options.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": options.dask_workers, "processes": True,
                                              "threads_per_worker": max(1, options.concurrency // 2),
                                              "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=8)
