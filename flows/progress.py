"""A run's progress, shown where someone is looking: a Prefect progress artifact (the UI's
bar for the flow run) and, when the process writes to a terminal, a tqdm bar."""

from __future__ import annotations

import sys
import time

from reports.artifacts import artifact_key, create as create_artifact


class Progress:
    """``add_listed(n)`` as work is found, ``add_finished(n)`` as it is done, ``close()``
    at the end (the artifact then shows where the run got to). Outside a flow run (no
    Prefect API) the artifact is left out; in a pipe or a log the bar is."""

    EVERY_SECONDS = 3.0  # the UI's bar moves every few seconds: one API call per batch would cost more than it shows

    def __init__(self, job: str, run_id: str, *, unit: str = "photo",
                 what: str = "Photos finished (delivered, skipped or failed) of those listed") -> None:
        self.listed = 0
        self.finished = 0
        self.updated = time.monotonic()
        self.artifact_id = None
        self.bar = None
        self.key = artifact_key(f"{job}-progress")
        try:  # on the run a person watches (a deployment's run_job, around the story's flow run)
            self.artifact_id = create_artifact("progress", progress=0.0, key=self.key,
                                               description=f"{what}, in percent ({job}, run {run_id})")
        except Exception:  # no API (plain call outside Prefect): the bar alone
            self.artifact_id = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=0, unit=unit, desc=job, file=sys.stderr, dynamic_ncols=True)

    def add_listed(self, n: int) -> None:
        self.listed += n
        if self.bar is not None:
            self.bar.total = self.listed
            self.bar.refresh()

    def add_finished(self, n: int) -> None:
        self.finished += n
        if self.bar is not None:
            self.bar.update(n)
        if time.monotonic() - self.updated >= self.EVERY_SECONDS:
            self._publish()

    def _publish(self) -> None:
        self.updated = time.monotonic()
        if self.artifact_id is not None and self.listed:
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(self.artifact_id, min(100.0, 100.0 * self.finished / self.listed))
            except Exception:
                pass

    def close(self) -> None:
        self._publish()
        if self.bar is not None:
            self.bar.close()
