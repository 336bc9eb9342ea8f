"""The stories photo-escape tells, by the name a job file gives in ``flow:``.

A story is a job model (what its job file holds) and a flow (what it does). The
command line (``photo-escape run``) and the Prefect entry point (``flows/run_job.py``)
both read this table, so a new story is a job model, a flow, and one line here.

Names are ``module:attribute`` strings: reading the table imports neither Prefect nor
the flows, and the command line stays quick to start.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from photo_escape.jobspec import JobBase, JobSpecError, format_errors, read_job_data


@dataclass(frozen=True)
class Story:
    name: str
    job_model: str  # "module:Class", a subclass of JobBase
    flow: str  # "module:function", a Prefect flow taking (job, dry_run, only_failed, run_id, fail_on_failed_items)
    summary: str  # one sentence: what it moves from where to where

    def model(self) -> type[JobBase]:
        return _attribute(self.job_model)

    def flow_for(self, job: JobBase) -> Any:
        """The story's flow, run by the task runner the job's options ask for (threads, or Dask)."""
        story_flow = _attribute(self.flow)
        if job.options.task_runner == "dask":
            from flows.runners import task_runner_for

            story_flow = story_flow.with_options(task_runner=task_runner_for(job.options))
        return story_flow


STORIES: dict[str, Story] = {s.name: s for s in (
    Story("escape", "photo_escape.jobspec:JobSpec", "flows.escape:escape",
          "moves a photo collection from a source (folder, website, numbered URLs, S3) to a destination"),
    Story("replace_hires", "tasks.hires:HiresJob", "flows.replace_hires:replace_hires",
          "replaces a Flickr account's photos with the library's larger masters"),
    Story("find_my_photo", "photo_escape.jobspec:FindJob", "flows.find_my_photo:find_my_photo",
          "ranks a harvested folder against small crops to find your own pictures"),
)}


def _attribute(name: str) -> Any:
    module, attr = name.split(":")
    return getattr(importlib.import_module(module), attr)


def story_of(data: dict[str, Any], origin: str = "job spec", default: str = "escape") -> Story:
    """The story a job's plain data names in ``flow:`` (``default`` when it names none)."""
    name = data.get("flow", default)
    if name not in STORIES:
        raise JobSpecError(f"{origin}: flow {name!r} is not known; expected one of: {', '.join(STORIES)}")
    return STORIES[name]


def read_job_file(path: str | Path, story: str = "escape") -> dict[str, Any]:
    """A job file's plain data, as its story reads it (some take paths from the file's folder)."""
    data = read_job_data(path)
    return story_of(data, str(path), story).model().from_file_data(data, Path(path).resolve().parent)


def load_job(job: JobBase | dict[str, Any] | str | Path, story: str = "escape") -> JobBase:
    """A validated job of any story, from a model, plain data, or a YAML file's path; a job
    that names no story in ``flow:`` is one of ``story``'s (a story's own flow says which).

    A job that does not validate raises :class:`JobSpecError` with one line per field."""
    if isinstance(job, JobBase):
        return job
    origin = "job spec"
    if isinstance(job, (str, Path)):
        origin, job = str(job), read_job_file(job, story)
    if not isinstance(job, dict):
        raise JobSpecError(f"{origin}: expected a mapping of fields (name, source, destination, ...)")
    model = story_of(job, origin, story).model()
    try:
        return model.model_validate(job)
    except ValidationError as exc:
        raise JobSpecError(f"{origin} is not valid:\n  " + "\n  ".join(format_errors(exc).splitlines())) from None
