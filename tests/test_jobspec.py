"""The job spec: valid specs load; bad ones are rejected with messages naming the field."""

import pytest

from photo_escape.jobspec import JobSpecError, load_job, parse_job
from tests.fixtures.fresh import in_a_fresh_process


def _spec(tmp_path, **over):
    (tmp_path / "in").mkdir(exist_ok=True)
    spec = {
        "name": "family",
        "source": {"kind": "local", "path": str(tmp_path / "in"), "pattern": "*.jpg"},
        "destination": {"kind": "local", "path": str(tmp_path / "out")},
    }
    spec.update(over)
    return spec


def test_a_valid_spec_loads_with_defaults(tmp_path):
    spec = parse_job(_spec(tmp_path))
    assert spec.source.kind == "local" and spec.destination.kind == "local"
    assert spec.options.batch_size == 200
    assert spec.ledger_path.name == "family.duckdb"
    assert spec.destination.layout == "{taken:%Y/%m/%d}/{name}"


def test_yaml_file(tmp_path):
    (tmp_path / "in").mkdir()
    path = tmp_path / "job.yaml"
    path.write_text(
        f"name: nas\nsource: {{kind: local, path: {tmp_path / 'in'}, recursive: false}}\n"
        f"destination: {{kind: local, path: {tmp_path / 'out'}, layout: '{{name}}'}}\n"
        "options: {batch_size: 50, concurrency: 2}\n"
    )
    spec = load_job(path)
    assert spec.options.batch_size == 50 and spec.source.recursive is False


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"name": "bad name/with slash"}, "name: use letters"),
        ({"source": {"kind": "ftp"}}, "kind 'ftp' is not known; expected one of:"),
        ({"source": {"kind": "local"}}, "source.path: is required but missing"),
        ({"destination": {"kind": "local", "path": "/tmp/x", "layot": "{name}"}}, "destination.layot: is not a known field"),
        ({"destination": {"kind": "local", "path": "/tmp/x", "layout": "{nmae}"}}, "unknown field 'nmae'"),
        ({"options": {"batch_size": 0}}, "options.batch_size: Input should be greater than or equal to 1"),
        ({"default_tz": "Mars/Olympus"}, "'Mars/Olympus' is not an IANA time zone name"),
        ({"colour": "blue"}, "colour: is not a known field"),
    ],
)
def test_bad_specs_name_the_field(tmp_path, change, expected):
    with pytest.raises(JobSpecError) as err:
        parse_job(_spec(tmp_path, **change))
    assert expected in str(err.value), str(err.value)


def test_a_source_folder_that_does_not_exist(tmp_path):
    with pytest.raises(JobSpecError) as err:
        parse_job(_spec(tmp_path, source={"kind": "local", "path": str(tmp_path / "nope")}))
    assert "source.path" in str(err.value) and "is not a folder that exists" in str(err.value)


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(JobSpecError, match="is not valid YAML"):
        load_job(bad)
    with pytest.raises(JobSpecError, match="cannot read job file"):
        load_job(tmp_path / "missing.yaml")
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- a\n- b\n")
    with pytest.raises(JobSpecError, match="expected a mapping"):
        load_job(notmap)


def test_a_password_written_into_the_job_is_refused_without_echoing_it(tmp_path):
    spec = _spec(tmp_path, source={
        "kind": "gallery",
        "login": {"url": "http://127.0.0.1:9/", "fields": {"username": "alice"},
                  "secret_fields": {"password": "hunter2-Plain-Text"}},
        "pages": {"url": "http://127.0.0.1:9/p?p={page}"},
        "images": {"css": "img"},
    })
    with pytest.raises(JobSpecError) as err:
        parse_job(spec)
    assert "source.login.secret_fields.password" in str(err.value)
    assert "hunter2-Plain-Text" not in str(err.value)


def test_a_job_imports_only_its_own_source_and_destination(tmp_path):
    """A job's kinds are found by their modules' names: loading a folder-to-S3 job
    imports tasks.sources.local and tasks.destinations.s3 and no other plugin (nor what
    they import: requests, parsel); an unknown kind still lists every kind there is."""
    import json

    spec = json.dumps(_spec(tmp_path, destination={"kind": "s3", "bucket": "b"}))
    code = (
        "import json, sys\n"
        "from photo_escape.jobspec import parse_job, JobSpecError\n"
        f"spec = json.loads({spec!r})\n"
        "parse_job(spec)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('tasks.sources.', 'tasks.destinations.')))\n"
        "third = [m for m in ('requests', 'parsel', 'flickrapi') if m in sys.modules]\n"
        "try:\n"
        "    parse_job(dict(spec, source={'kind': 'ftp'}))\n"
        "except JobSpecError as exc:\n"
        "    error = str(exc)\n"
        "print(json.dumps({'loaded': loaded, 'third': third, 'error': error}))\n"
    )
    got = in_a_fresh_process(code)
    assert got["loaded"] == ["tasks.destinations.s3", "tasks.sources.local"]
    assert got["third"] == []
    assert "kind 'ftp' is not known; expected one of:" in got["error"]
    assert all(k in got["error"] for k in ("gallery", "numbered", "takeout", "flickr", "s3", "local"))


def test_every_plugin_module_is_named_after_its_kind():
    """The convention that lets a job import only its own plugins."""
    from photo_escape.plugins import _modules, destination_kinds, source_kinds

    for pkg, kinds in (("tasks.sources", source_kinds()), ("tasks.destinations", destination_kinds())):
        assert sorted(kinds) == sorted(_modules(pkg))
        for kind, cls in kinds.items():
            assert cls.__module__ == f"{pkg}.{kind}"
