"""The deployments' entry point: run any photo-escape job from the Prefect UI or a schedule.

The parameters are pydantic models, so the Prefect UI shows a form: the job (a job
file on the worker's disk, or an inline spec), ``dry_run`` and ``only_failed``. The
job's ``flow:`` field picks the story's flow (the escape flow unless it says
otherwise), and its ``options.task_runner`` picks threads or a Dask cluster.

By default a run in which photos failed ends **Failed** once everything is recorded
and reported, so the Prefect UI offers *Retry*; a retry is a rerun, which skips what
the ledger shows done and redoes the rest.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, tags
from prefect.runtime import flow_run
from pydantic import BaseModel, Field, model_validator


class JobInput(BaseModel):
    """Which job to run: a job file, or a spec written inline (exactly one)."""

    job_file: str | None = Field(None, description="path of a job spec YAML on the worker (relative to its working directory)")
    spec: dict[str, Any] | None = Field(None, description="an inline job spec, with the same fields as a job file")

    @model_validator(mode="after")
    def _one(self) -> "JobInput":
        if bool(self.job_file) == bool(self.spec):
            raise ValueError("give either job_file or spec")
        return self

    def load(self) -> dict[str, Any]:
        if self.spec is not None:
            return dict(self.spec)
        data = yaml.safe_load(Path(self.job_file).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{self.job_file}: expected a mapping of fields")
        return data


# a job's ``flow:`` field -> the module and function of that story's flow
STORY_FLOWS = {
    "escape": ("flows.escape", "escape"),
    "replace_hires": ("flows.replace_hires", "replace_hires"),
    "find_my_photo": ("flows.find_my_photo", "find_my_photo"),
}


@flow(name="photo-escape-job", log_prints=True)
def run_job(job: JobInput, dry_run: bool = False, only_failed: bool = False,
            fail_on_failed_items: bool = True) -> dict:
    """Run one photo-escape job (any story) and return its summary."""
    data = job.load()
    name = data.get("flow", "escape")
    if name not in STORY_FLOWS:
        raise ValueError(f"flow {name!r} is not known; expected one of: {', '.join(STORY_FLOWS)}")
    # the story's flow run carries this run's tags (the deployment's), so what watches
    # them (prefect-automations.yaml, filters in the UI) sees the run doing the work too
    with tags(*(flow_run.tags or [])):
        return _run_story(name, job, data, dry_run=dry_run, only_failed=only_failed,
                          fail_on_failed_items=fail_on_failed_items)


def _run_story(name: str, job: JobInput, data: dict, *, dry_run: bool, only_failed: bool,
               fail_on_failed_items: bool) -> dict:
    if name == "escape":
        from flows.escape import escape_flow_for, job_spec

        spec = job_spec(data)
        return escape_flow_for(spec)(spec.dump(), dry_run=dry_run, only_failed=only_failed,
                                     fail_on_failed_items=fail_on_failed_items)
    module, func = STORY_FLOWS[name]
    story_flow = getattr(importlib.import_module(module), func)
    params = {"dry_run": dry_run, "only_failed": only_failed}
    if "fail_on_failed_items" in inspect.signature(story_flow.fn).parameters:
        params["fail_on_failed_items"] = fail_on_failed_items
    return story_flow(job.job_file or data, **params)
