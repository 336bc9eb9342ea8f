"""One flow per story; a flow only orchestrates (no HTTP or SQL of its own)."""


def flow_run_id() -> str | None:
    """The id of the Prefect flow run we are in, if any (recorded with each ledger run)."""
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id) if flow_run.id else None
    except Exception:  # noqa: BLE001 - outside Prefect there is simply no id
        return None
