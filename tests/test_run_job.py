"""The deployments' entry flow: a job form (file or inline spec) for any story."""

from __future__ import annotations

import pytest
import yaml

from sandbox import photos
from tests.fixtures.jobs import local_job

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _escape_job(tmp_path) -> dict:
    photos.make_collection(tmp_path / "camera", count=4, bad=True)
    return local_job(tmp_path, "run-job-test", {"processes": 1})


def test_an_inline_spec_runs_and_failed_photos_fail_the_flow_run_for_a_retry(tmp_path):
    from flows.run_job import JobInput, run_job

    spec = _escape_job(tmp_path)
    state = run_job(JobInput(spec=spec), return_state=True)
    assert state.is_failed() and "3 of 7 photos failed" in state.message
    # asked not to fail, the same job (now from a file) reports its summary; nothing is redone
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    summary = run_job(JobInput(job_file=str(path)), fail_on_failed_items=False)
    assert (summary["listed"], summary["done"], summary["failed"]) == (7, 4, 3)
    assert len([p for p in (tmp_path / "archive").rglob("*") if p.is_file()]) == 4


def test_the_form_needs_exactly_one_way_to_name_the_job():
    from pydantic import ValidationError

    from flows.run_job import JobInput

    with pytest.raises(ValidationError, match="either job_file or spec"):
        JobInput()
    with pytest.raises(ValidationError, match="either job_file or spec"):
        JobInput(job_file="a.yaml", spec={"name": "x"})


def test_the_hires_story_runs_through_the_same_form(flickr_account, tmp_path, flickr_test_secrets):
    from flows.run_job import JobInput, run_job

    acct = flickr_account()
    summary = run_job(JobInput(spec=acct.job(tmp_path)))
    assert summary["replaced"] > 0 and summary["failed"] == 0
    assert summary["listed"] == summary["done"] + summary["skipped"] + summary["failed"] + summary["pending"]


def test_the_forms_fields_are_plain_and_described():
    """What the Prefect UI builds its Custom run form from: no union (shown as a choice of
    types, "str" / "None") and a description for every field, in both deployed flows."""
    import json

    from prefect.utilities.callables import parameter_schema

    from flows.run_job import JobInput, run_job
    from flows.verify import verify

    for fl in (run_job, verify):
        schema = parameter_schema(fl.fn).model_dump()
        assert "anyOf" not in json.dumps(schema)
        fields = list(schema["properties"].values()) + [
            f for d in schema.get("definitions", {}).values() for f in d["properties"].values()]
        assert all(f.get("description") for f in fields), fl.name
    assert run_job.fn.__defaults__ == (False, False, True)  # dry_run, only_failed, fail_on_failed_items
    # Python callers may name the job as they name it to the story flows
    assert JobInput.model_validate("jobs/s3.yaml").job() == "jobs/s3.yaml"
    assert JobInput.model_validate({"name": "x"}).job() == {"name": "x"}
    assert JobInput.model_validate({"job_file": None, "spec": {"name": "x"}}).job() == {"name": "x"}
