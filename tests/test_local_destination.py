"""A local folder as the destination: a file the run downloaded into its work folder is
given to the destination (fsynced, then hard-linked: no second write, no staging file,
no deleted inode left behind); the user's own files (a local source) are always copied,
so the archive never shares an inode with the folder it was made from."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tasks.destinations.local import LocalDestination, LocalDestinationConfig


def photo(path: Path, body: bytes) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return {"item_id": f"test:{path.name}", "name": path.name, "local_path": str(path), "bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest()}


def destination(tmp_path: Path) -> LocalDestination:
    return LocalDestination(LocalDestinationConfig(kind="local", path=tmp_path / "archive", layout="{name}"),
                            workdir=tmp_path / "work" / "run-1")


def test_a_download_is_linked_into_place_and_the_users_own_file_is_copied(tmp_path):
    dest = destination(tmp_path)
    downloaded = photo(tmp_path / "work" / "run-1" / "numbered" / "1.jpg", b"\xff\xd8downloaded\xff\xd9")
    own = photo(tmp_path / "pictures" / "2.jpg", b"\xff\xd8the user's own\xff\xd9")
    out = {o["item_id"]: o for o in dest.deliver([downloaded, own])}
    assert [out[i]["reason"] for i in ("test:1.jpg", "test:2.jpg")] == ["delivered", "delivered"]
    linked, copied = tmp_path / "archive" / "1.jpg", tmp_path / "archive" / "2.jpg"
    assert os.path.samefile(linked, downloaded["local_path"])  # the bytes that were hashed, not a copy
    assert not os.path.samefile(copied, own["local_path"]) and os.stat(own["local_path"]).st_nlink == 1
    assert copied.read_bytes() == b"\xff\xd8the user's own\xff\xd9"
    assert not any((tmp_path / "archive" / ".photo-escape-staging").glob("*"))
    # the run removes its download: the photo stays, whole
    os.unlink(downloaded["local_path"])
    assert hashlib.sha256(linked.read_bytes()).hexdigest() == downloaded["sha256"]
    assert os.stat(linked).st_nlink == 1
    # delivered again (a retried batch): already there, nothing new
    assert dest.deliver([own])[0]["reason"] == "already_present"


def test_a_download_that_already_has_another_name_is_copied(tmp_path):
    """Two names for one download (two items of a batch sharing it) must not become two
    names for one file in the archive: the second is a copy."""
    dest = destination(tmp_path)
    first = photo(tmp_path / "work" / "run-1" / "gallery" / "a.jpg", b"\xff\xd8same\xff\xd9")
    os.link(first["local_path"], tmp_path / "work" / "run-1" / "gallery" / "b.jpg")
    second = dict(first, item_id="test:b.jpg", name="b.jpg", local_path=str(tmp_path / "work" / "run-1" / "gallery" / "b.jpg"))
    out = dest.deliver([second])
    assert out[0]["reason"] == "delivered"
    assert not os.path.samefile(tmp_path / "archive" / "b.jpg", second["local_path"])


def test_a_name_taken_by_other_content_gets_a_suffix_and_the_download_is_still_linked(tmp_path):
    dest = destination(tmp_path)
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "1.jpg").write_bytes(b"someone else's")
    downloaded = photo(tmp_path / "work" / "run-1" / "numbered" / "1.jpg", b"\xff\xd8mine\xff\xd9")
    (o,) = dest.deliver([downloaded])
    assert o["reason"] == "delivered" and o["detail"]["target"] != "1.jpg"
    assert os.path.samefile(tmp_path / "archive" / o["detail"]["target"], downloaded["local_path"])
    assert (tmp_path / "archive" / "1.jpg").read_bytes() == b"someone else's"
