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

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, tags
from prefect.runtime import flow_run
from prefect.states import Cancelled, Failed
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from photo_escape.stories import load_job, story_of


class JobInput(BaseModel):
    """The job to run: the path of its job file on the worker, or the job itself written here."""

    model_config = ConfigDict(title="Job")

    # plain fields with empty defaults, not ``str | None``: the Prefect UI shows a union
    # as a choice of types ("str" / "None") where a person expects a text box
    job_file: str = Field(
        "", title="Job file",
        description="Path of the job's YAML file on the worker, relative to the photo-escape folder "
                    "(for example jobs/gallery.yaml) or absolute. Leave empty to write the job below.")
    spec: dict[str, Any] = Field(
        default_factory=dict, title="Job written here",
        description="The job itself, with the fields of a job file (name, source, destination, options); "
                    "only when no job file is given.")

    @model_validator(mode="before")
    @classmethod
    def _from_path_or_spec(cls, data: Any) -> Any:
        """Python callers may give the job as they give it to the story flows: the path of
        its file, or the job itself."""
        if isinstance(data, (str, Path)):
            return {"job_file": str(data)}
        if isinstance(data, dict) and data and not set(data) <= {"job_file", "spec"}:
            return {"spec": data}
        return data

    @field_validator("job_file", "spec", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any, info: ValidationInfo) -> Any:
        """A null (an older deployment's saved parameters, an API call) counts as not given."""
        if value is None:
            return "" if info.field_name == "job_file" else {}
        return value

    @model_validator(mode="after")
    def _one(self) -> "JobInput":
        if bool(self.job_file.strip()) == bool(self.spec):
            raise ValueError("give either job_file or spec")
        return self

    def job(self) -> str | dict[str, Any]:
        """The job file's path or the inline spec, as :func:`photo_escape.stories.load_job` takes it."""
        return self.job_file.strip() or dict(self.spec)


@flow(name="photo-escape-job", log_prints=True)
def run_job(job: JobInput, dry_run: bool = False, only_failed: bool = False,
            fail_on_failed_items: bool = True) -> dict:
    """Run one photo-escape job (any story) and return its summary.

    Args:
        job: Which job to run: the path of its job file on the worker, or the job written inline.
        dry_run: Plan only: fetch and date the photos and report what would be delivered,
            but deliver nothing (review the plan, then run again without).
        only_failed: Redo only the photos whose last attempt failed (the ledger knows them),
            without listing the source again.
        fail_on_failed_items: End the run Failed when any photo failed (after everything is
            recorded and reported), so that Retry redoes just what is left; off, such a run
            ends Completed.
    """
    log = get_run_logger()
    spec = load_job(job.job())
    story = story_of(spec.dump())
    log.info("job %s: the %s story, which %s%s%s; its photos are worked by the story's flow run (Subflow Runs), "
             "its progress and report are under Artifacts", spec.name, story.name, story.summary,
             " (dry run: nothing delivered)" if dry_run else "", " (only the photos that failed)" if only_failed else "")
    # the story's flow run carries this run's tags (the deployment's), so what watches
    # them (prefect-automations.yaml, filters in the UI) sees the run doing the work too
    with tags(*(flow_run.tags or [])):
        state = story.flow_for(spec)(spec.dump(), dry_run=dry_run, only_failed=only_failed,
                                     fail_on_failed_items=fail_on_failed_items, return_state=True)
    if not state.is_completed():
        # this run ends as the story's did, with its one-line message and no second traceback
        log.error("%s: %s", spec.name, state.message)
        return (Cancelled if state.is_cancelled() else Failed)(message=state.message)
    summary = state.result()
    log.info("%s: %s listed = %s done + %s skipped + %s failed + %s pending; report: %s", spec.name,
             *(summary.get(k) for k in ("listed", "done", "skipped", "failed", "pending", "report")))
    return summary
