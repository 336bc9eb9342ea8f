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

from typing import Any

from prefect import flow, tags
from prefect.runtime import flow_run
from pydantic import BaseModel, Field, model_validator

from photo_escape.stories import load_job, story_of


class JobInput(BaseModel):
    """Which job to run: a job file, or a spec written inline (exactly one)."""

    job_file: str | None = Field(None, description="path of a job spec YAML on the worker (relative to its working directory)")
    spec: dict[str, Any] | None = Field(None, description="an inline job spec, with the same fields as a job file")

    @model_validator(mode="after")
    def _one(self) -> "JobInput":
        if bool(self.job_file) == bool(self.spec):
            raise ValueError("give either job_file or spec")
        return self

    def job(self) -> str | dict[str, Any]:
        """The job file's path or the inline spec, as :func:`photo_escape.stories.load_job` takes it."""
        return self.job_file or dict(self.spec)


@flow(name="photo-escape-job", log_prints=True)
def run_job(job: JobInput, dry_run: bool = False, only_failed: bool = False,
            fail_on_failed_items: bool = True) -> dict:
    """Run one photo-escape job (any story) and return its summary."""
    spec = load_job(job.job())
    story_flow = story_of(spec.dump()).flow_for(spec)
    # the story's flow run carries this run's tags (the deployment's), so what watches
    # them (prefect-automations.yaml, filters in the UI) sees the run doing the work too
    with tags(*(flow_run.tags or [])):
        return story_flow(spec.dump(), dry_run=dry_run, only_failed=only_failed,
                          fail_on_failed_items=fail_on_failed_items)
