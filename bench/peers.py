"""Whole commands side by side: photo-escape against the tool its user would pick instead.

Each race runs two (or three) whole commands from the shell, start-up included, on the
same data and the same sandbox servers (each in its own process), in alternating
rounds, and prints the medians and their ratio (photo-escape's time / the peer's: above
1, photo-escape is slower). Each peer runs the way its users run it, with the same
concurrency as photo-escape (8):

``s3``         a folder of JPEGs (640x480 to 1600x1200, dated sub-folders) to S3 (moto's
               server), originals only, then the same again (nothing to do), against
               ``rclone copy --checksum --transfers 8``; photo-escape also with thumbnails.
               photo-escape hashes, reads capture times and keeps its ledger on the way.
``first``      the fixed cost: ONE photo from a folder to S3 (originals only), a whole
               command against ``rclone copy`` of the same photo; photo-escape's note
               says when the photo was delivered, counted from the shell's start of the
               command (its ledger's deliver event), i.e. start-up to the first photo.
``folder``     the same folder to another folder: ``photo-escape run`` (local to local)
               against ``rclone copy --checksum --transfers 8``, first copy and rerun.
``numbered``   a numbered host (a quarter of the numbers missing) answering after
               ``--latency-ms`` (30), against ``gallery-dl -i urls.txt`` (one at a time,
               as gallery-dl downloads); ``numbered-loopback``: the same with no delay.
``gallery``    the photo-frame gallery (login, pages of 48, ~t~ to ~a~), against the
               original rescue's scrapy spider with ImagesPipeline, as a whole process.
``capture``    reading capture times of the folder: ``photo-escape capture-time DIR --json``
               against ``exiftool -json -r`` with the date, offset and GPS tags.

    .venv/bin/python bench/peers.py --quick                 # a tiny smoke run of every race
    .venv/bin/python bench/peers.py                         # 1,000 photos, 3 rounds
    .venv/bin/python bench/peers.py --photos 2000 --races s3,numbered --rounds 5
    .venv/bin/python bench/peers.py --races first --rounds 5  # start-up to the first photo delivered
    .venv/bin/python bench/peers.py --races s3 --photos 20000 --no-thumbnails --rounds 1  # the rerun at 20,000
    .venv/bin/python bench/peers.py --photo-escape "env PYTHONPATH=$PWD .venv/bin/python -m photo_escape.cli"
    .venv/bin/python bench/peers.py --prefect-api http://127.0.0.1:4200/api   # a running Prefect server
    .venv/bin/python bench/peers.py --server      # with `photo-escape server start` (its warm runner) up

Needs ``rclone`` and ``exiftool`` (Debian: ``apt-get install rclone libimage-exiftool-perl``)
and gallery-dl in its own environment (``python3 -m venv /tmp/gdl-venv &&
/tmp/gdl-venv/bin/pip install gallery-dl``; ``--gallery-dl`` names its command). A race
whose peer is missing is skipped and said so. Pictures are made once into ``--data``
and kept. Every command has a time limit (``--timeout``); figures are only worth
something on a quiet machine (the load average is printed before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONCURRENCY = 8
SIZES = [(640, 480), (1024, 768), (1280, 960), (1600, 1200)]
RACES = ("s3", "first", "folder", "numbered", "numbered-loopback", "gallery", "capture")
S3_KEYS_VAR = "PEERS_S3_KEYS"


# -- data ----------------------------------------------------------------------------------
def camera_folder(data: Path, count: int) -> Path:
    """``count`` real JPEGs of 640x480 to 1600x1200 with EXIF capture times, in dated
    sub-folders as a camera import makes them (made once, kept in ``data``)."""
    from sandbox import photos

    folder = data / f"camera-{count}"
    done = data / f"camera-{count}.complete"
    if done.exists():
        return folder
    start = datetime(2006, 10, 4, 9, 30)
    t = time.perf_counter()
    for i in range(count):
        taken = start + timedelta(hours=5 * i, minutes=13 * i)
        path = folder / taken.strftime("%Y-%m-%d") / f"IMG_{i + 1:05d}.JPG"
        if not path.exists():
            offset = "+02:00" if i % 3 == 0 else None
            photos.write_jpeg(path, i, size=SIZES[i % len(SIZES)], taken=taken, offset=offset)
    done.write_text(str(count))
    print(f"made {count} pictures in {folder} ({time.perf_counter() - t:.0f} s, not timed)", flush=True)
    return folder


# -- processes -----------------------------------------------------------------------------
class Servers:
    """Sandbox servers, each in its own process; stopped (by their own pid) at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str) -> dict:
        """``python -m sandbox.<args>``; returns the JSON line it prints when ready."""
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.procs.append(proc)
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"sandbox server {args[0]} did not start")
        return json.loads(line)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@dataclass
class Command:
    """One contender's whole command in one phase: argv, environment, output files."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    stdout: Path | None = None
    ok_codes: tuple[int, ...] = (0,)
    started: float | None = None  # wall-clock time (epoch seconds) the shell started it


@dataclass
class Contender:
    name: str
    command: Callable[[int, str], Command]  # (round, phase) -> Command
    check: Callable[[int, str], str]  # (round, phase) -> "" when the result is complete, else what is wrong
    prepare: Callable[[int], None] = lambda r: None  # before a round's first phase (untimed)
    phases: tuple[str, ...] = ("run",)
    note: Callable[[float], str] = lambda seconds: ""  # after a timed run: what the server saw


@dataclass
class Race:
    name: str
    what: str
    peer: str  # the name of the peer contender
    contenders: list[Contender]
    phases: tuple[str, ...] = ("run",)


def command_environment(extra: dict[str, str]) -> dict[str, str]:
    """A contender's environment: this one's, plain-HTTP endpoints only, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env.update(extra)
    return env


def timed(cmd: Command, timeout: float) -> tuple[float, str]:
    """Wall seconds of a whole command (start-up included), and an error ('' if none)."""
    env = command_environment(cmd.env)
    out = open(cmd.stdout, "wb") if cmd.stdout else subprocess.DEVNULL
    cmd.started = time.time()
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd.argv, env=env, stdout=out, stderr=subprocess.PIPE, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - t, f"timed out after {timeout:.0f} s"
    finally:
        if cmd.stdout:
            out.close()
    seconds = time.perf_counter() - t
    if proc.returncode not in cmd.ok_codes:
        return seconds, f"exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-600:]}"
    return seconds, ""


def run_race(race: Race, rounds: int, timeout: float) -> dict:
    """Alternating rounds: each round prepares every contender, then runs each phase with
    the contenders in turn, the order reversed every other round."""
    times: dict[tuple[str, str], list[float]] = {}
    problems: list[str] = []
    for r in range(rounds):
        order = race.contenders if r % 2 == 0 else race.contenders[::-1]
        for c in order:
            c.prepare(r)
        for phase in race.phases:
            for c in order:
                if phase not in c.phases:
                    continue
                seconds, error = timed(c.command(r, phase), timeout)
                error = error or c.check(r, phase)
                note = c.note(seconds)
                if error:
                    problems.append(f"round {r + 1}, {c.name}, {phase}: {error}")
                times.setdefault((c.name, phase), []).append(seconds)
                print(f"  {race.name:18s} round {r + 1} {phase:11s} {c.name:28s} {seconds:8.2f} s"
                      + (f"   {note}" if note else "") + (f"   PROBLEM: {error[:200]}" if error else ""), flush=True)
    rows = []
    for phase in race.phases:
        peer = times.get((race.peer, phase))
        for c in race.contenders:
            if c.name == race.peer or (c.name, phase) not in times:
                continue
            ours = statistics.median(times[(c.name, phase)])
            theirs = statistics.median(peer) if peer else None
            rows.append({"race": race.name, "phase": phase, "contender": c.name, "peer": race.peer,
                         "seconds": round(ours, 3), "peer_seconds": None if theirs is None else round(theirs, 3),
                         "ratio": None if not theirs else round(ours / theirs, 3),
                         "rounds": [round(x, 3) for x in times[(c.name, phase)]],
                         "peer_rounds": [round(x, 3) for x in peer or []]})
    return {"race": race.name, "what": race.what, "rows": rows, "problems": problems}


# -- the races ------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="pe-peers-", dir=args.work))
        self.data = Path(args.data)
        self.data.mkdir(parents=True, exist_ok=True)
        self.servers = Servers()
        self.pe = shlex.split(args.photo_escape) if args.photo_escape else default_photo_escape()
        self.pe_env = {"PREFECT_HOME": str(Path(args.prefect_home or self.data / "prefect-home").resolve()),
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
        if args.prefect_api:
            self.pe_env["PREFECT_API_URL"] = args.prefect_api
        self._s3: dict | None = None

    def warm_up(self) -> None:
        """One untimed photo-escape run (Prefect's database made, caches filled) and each
        peer started once, so round 1 does not pay for a first start."""
        folder = camera_folder(self.data, 2)
        job = self.job("warm-up", {"kind": "local", "path": str(folder)},
                       {"kind": "local", "path": str(self.work / "warm-up-out")})
        seconds, error = timed(self.photo_escape(job, "warm-up"), self.args.timeout)
        print(f"warm-up: photo-escape run in {seconds:.1f} s (not counted){'; ' + error if error else ''}", flush=True)
        for tool in (["rclone", "version"], ["exiftool", "-ver"], shlex.split(self.args.gallery_dl) + ["--version"]):
            if shutil.which(tool[0]):
                timed(Command(tool), 60)

    # shared pieces
    def photo_escape(self, job: dict, name: str, stdout: Path | None = None) -> Command:
        path = self.work / f"{name}.yaml"
        if not path.exists():
            import yaml

            path.write_text(yaml.safe_dump(job, sort_keys=False))
        return Command(self.pe + ["run", str(path), "--json"], dict(self.pe_env), stdout=stdout)

    def job(self, name: str, source: dict, destination: dict, **options) -> dict:
        home = self.work / name
        return {"name": name, "ledger": str(home / "ledger.duckdb"), "work_dir": str(home / "work"),
                "reports_dir": str(home / "reports"), "source": source, "destination": destination,
                "options": {"batch_size": 200, "concurrency": CONCURRENCY, **options}}

    def summary_check(self, stdout: Path, expect_done: int | None = None) -> str:
        """'' if photo-escape's summary (the last --json line) shows nothing failed or pending."""
        try:
            summary = json.loads(stdout.read_text().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError):
            return "no summary line"
        bad = {k: summary.get(k) for k in ("failed", "pending") if summary.get(k)}
        if expect_done is not None and summary.get("done", 0) + summary.get("skipped", 0) < expect_done:
            bad["done+skipped"] = summary.get("done", 0) + summary.get("skipped", 0)
        return f"summary {bad}" if bad else ""

    def s3(self) -> dict:
        if self._s3 is None:
            self._s3 = self.servers.start("sandbox.s3")
        return self._s3

    def s3_keys(self) -> dict[str, str]:
        """The environment variable photo-escape's jobs name for the S3 keys."""
        return {S3_KEYS_VAR: json.dumps({k: v for k, v in self.s3().items() if k != "url"})}

    def buckets(self, prefix: str) -> tuple[Callable[[str, int], str], Callable[[str], Callable[[int], None]]]:
        """``bucket(who, round)``: a bucket name of its own per contender and round; and
        ``fresh(who)``: a contender's ``prepare`` that creates its round's bucket."""
        names: dict[tuple[str, int], str] = {}

        def bucket(who: str, r: int) -> str:
            return names.setdefault((who, r), f"{prefix}-{who}-{r}-{uuid.uuid4().hex[:6]}")

        def fresh(who: str) -> Callable[[int], None]:
            def prepare(r: int) -> None:
                self.s3_client().create_bucket(Bucket=bucket(who, r))
            return prepare
        return bucket, fresh

    def rclone_to_s3(self, folder: Path, n: int, bucket: Callable[[str, int], str],
                     fresh: Callable[[str], Callable[[int], None]], phases: tuple[str, ...] = ("run",)) -> Contender:
        """rclone as the S3 races' peer: ``copy --checksum --transfers 8`` of ``folder`` into
        its round's bucket (from :meth:`buckets`) under ``originals/``; checked by counting ``n`` objects."""
        def command(r: int, phase: str) -> Command:
            return Command(["rclone", "copy", "--checksum", "--transfers", str(CONCURRENCY), str(folder),
                            f"peers3:{bucket('rclone', r)}/originals"], self.rclone_env())

        def check(r: int, phase: str) -> str:
            got = self.count_objects(bucket("rclone", r), "originals/")
            return "" if got == n else f"{got} of {n} objects"
        return Contender("rclone", command, check, fresh("rclone"), phases)

    def s3_client(self):
        import boto3

        s3 = self.s3()
        return boto3.client("s3", endpoint_url=s3["url"], region_name="us-east-1",
                            aws_access_key_id=s3["aws_access_key_id"], aws_secret_access_key=s3["aws_secret_access_key"])

    def count_objects(self, bucket: str, prefix: str) -> int:
        pages = self.s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sum(len(p.get("Contents", [])) for p in pages)

    def rclone_env(self) -> dict[str, str]:
        s3 = self.s3()
        empty = self.work / "rclone.conf"
        empty.touch()
        return {"RCLONE_CONFIG": str(empty), "RCLONE_CONFIG_PEERS3_TYPE": "s3", "RCLONE_CONFIG_PEERS3_PROVIDER": "Other",
                "RCLONE_CONFIG_PEERS3_ENDPOINT": s3["url"], "RCLONE_CONFIG_PEERS3_REGION": "us-east-1",
                "RCLONE_CONFIG_PEERS3_ACCESS_KEY_ID": s3["aws_access_key_id"],
                "RCLONE_CONFIG_PEERS3_SECRET_ACCESS_KEY": s3["aws_secret_access_key"]}

    # s3: folder -> bucket
    def race_s3(self) -> Race:
        folder = camera_folder(self.data, self.args.photos)
        n = self.args.photos
        keys = self.s3_keys()
        bucket, fresh = self.buckets("peers")

        def ours(who: str, thumbnails: bool) -> Contender:
            def command(r: int, phase: str) -> Command:
                dest = {"kind": "s3", "bucket": bucket(who, r), "endpoint_url": self.s3()["url"],
                        "credentials": {"env": S3_KEYS_VAR}}
                if not thumbnails:
                    dest["thumbnails"] = None
                job = self.job(f"s3-{who}-{r}", {"kind": "local", "path": str(folder)}, dest)
                cmd = self.photo_escape(job, f"s3-{who}-{r}", stdout=self.work / f"s3-{who}-{r}-{phase[:5]}.out")
                cmd.env.update(keys)
                return cmd

            def check(r: int, phase: str) -> str:
                got = self.count_objects(bucket(who, r), "originals/")
                return self.summary_check(self.work / f"s3-{who}-{r}-{phase[:5]}.out", n) or \
                    ("" if got == n else f"{got} of {n} originals in the bucket")
            phases = ("first copy", "rerun") if not thumbnails else ("first copy",)
            name = "photo-escape" + (" +thumbnails" if thumbnails else "")
            return Contender(name, command, check, fresh(who), phases)

        peer = self.rclone_to_s3(folder, n, bucket, fresh, ("first copy", "rerun"))
        contenders = [ours("pe", False), peer] + ([] if self.args.no_thumbnails else [ours("pet", True)])
        return Race("s3", f"{n} JPEGs from a folder to S3 (moto), originals only; then again (nothing to do)",
                    "rclone", contenders, ("first copy", "rerun"))

    # the fixed cost: one photo, shell to delivered
    def race_first(self) -> Race:
        folder = camera_folder(self.data, 1)
        keys = self.s3_keys()
        bucket, fresh = self.buckets("peers-first")
        issued: dict[int, Command] = {}

        def ours(r: int, phase: str) -> Command:
            dest = {"kind": "s3", "bucket": bucket("pe", r), "endpoint_url": self.s3()["url"],
                    "credentials": {"env": S3_KEYS_VAR}, "thumbnails": None}
            job = self.job(f"first-pe-{r}", {"kind": "local", "path": str(folder)}, dest)
            cmd = self.photo_escape(job, f"first-pe-{r}", stdout=self.work / f"first-pe-{r}.out")
            cmd.env.update(keys)
            issued[r] = cmd
            return cmd

        def delivered_after(r: int) -> float | None:
            """Seconds from the shell's start of round ``r``'s command to its photo's deliver
            event in the ledger (written as the upload's answer is in)."""
            import duckdb

            cmd = issued.get(r)
            if cmd is None or cmd.started is None:
                return None
            with duckdb.connect(str(self.work / f"first-pe-{r}" / "ledger.duckdb"), read_only=True) as con:
                at = con.execute("SELECT epoch(min(\"at\")) FROM events WHERE stage = 'deliver' "
                                 "AND outcome = 'ok'").fetchone()[0]
            return None if at is None else at - cmd.started

        firsts: list[float] = []

        def ours_check(r: int, phase: str) -> str:
            got = self.count_objects(bucket("pe", r), "originals/")
            after = delivered_after(r)
            if after is not None:
                firsts.append(after)
            return self.summary_check(self.work / f"first-pe-{r}.out", 1) or ("" if got == 1 else f"{got} of 1 in the bucket")

        def note(seconds: float) -> str:
            if not firsts:
                return ""
            return f"photo delivered {firsts[-1]:.2f} s after the shell started the command " \
                   f"(median so far {statistics.median(firsts):.2f} s)"

        return Race("first", "one JPEG from a folder to S3 (moto): start-up to the first photo delivered", "rclone",
                    [Contender("photo-escape", ours, ours_check, fresh("pe"), note=note),
                     self.rclone_to_s3(folder, 1, bucket, fresh)])

    # folder -> folder
    def race_folder(self) -> Race:
        folder = camera_folder(self.data, self.args.photos)
        n = self.args.photos

        def out(who: str, r: int) -> Path:
            return self.work / f"folder-{who}-{r}-out"

        def count(path: Path) -> int:
            return sum(1 for p in path.rglob("*.JPG")) if path.is_dir() else 0

        def ours(r: int, phase: str) -> Command:
            job = self.job(f"folder-pe-{r}", {"kind": "local", "path": str(folder)},
                           {"kind": "local", "path": str(out("pe", r))})
            return self.photo_escape(job, f"folder-pe-{r}", stdout=self.work / f"folder-pe-{r}-{phase[:5]}.out")

        def ours_check(r: int, phase: str) -> str:
            got = count(out("pe", r))
            return self.summary_check(self.work / f"folder-pe-{r}-{phase[:5]}.out", n) or \
                ("" if got == n else f"{got} of {n} files")

        def rclone(r: int, phase: str) -> Command:
            return Command(["rclone", "copy", "--checksum", "--transfers", str(CONCURRENCY), str(folder),
                            str(out("rclone", r))], {"RCLONE_CONFIG": str(self.work / "rclone.conf")})

        def rclone_check(r: int, phase: str) -> str:
            got = count(out("rclone", r))
            return "" if got == n else f"{got} of {n} files"

        (self.work / "rclone.conf").touch()
        both = ("first copy", "rerun")
        return Race("folder", f"{n} JPEGs from a folder to another folder; then again (nothing to do)", "rclone",
                    [Contender("photo-escape", ours, ours_check, phases=both),
                     Contender("rclone", rclone, rclone_check, phases=both)], both)

    # numbered host -> folder
    def race_numbered(self, latency_ms: float) -> Race:
        from sandbox.numbered import NumberedHost

        n = self.args.numbered
        host = self.servers.start("sandbox.numbered", "--count", str(n), "--latency-ms", str(latency_ms),
                                  "--size", self.args.numbered_size, "--warm",
                                  "--cache-dir", str(self.data / f"numbered-{self.args.numbered_size}"))
        present = len(NumberedHost(n, size=(1, 1), cache_dir=self.work / "unused").present_numbers())
        tag = f"{int(latency_ms)}ms"
        urls = self.work / f"urls-{tag}.txt"
        urls.write_text("".join(f"{host['url']}/gallery/full/{k}.jpg\n" for k in range(1, n + 1)))

        def out(who: str, r: int) -> Path:
            return self.work / f"numbered-{tag}-{who}-{r}"

        def admin(method: str = "GET") -> dict:
            import urllib.request

            req = urllib.request.Request(host["url"] + "/_admin/faults", method=method)
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())

        def in_flight(seconds: float) -> str:
            """Requests in flight at the host during the command (then forgotten)."""
            seen = admin()
            admin("DELETE")
            return f"at the host: {seen['requests']} requests, at most {seen['peak_in_flight']} in flight, " \
                   f"{seen['busy_seconds'] / seconds:.2f} on average over the whole command"

        def count(path: Path) -> int:
            return sum(1 for p in path.rglob("*.jpg")) if path.is_dir() else 0

        def ours(r: int, phase: str) -> Command:
            source = {"kind": "numbered", "url": host["url"] + "/gallery/full/{n}.jpg", "start": 1, "stop": n}
            job = self.job(f"numbered-{tag}-{r}", source, {"kind": "local", "path": str(out("pe", r)), "layout": "{name}"})
            return self.photo_escape(job, f"numbered-{tag}-{r}", stdout=self.work / f"numbered-{tag}-{r}.out")

        def ours_check(r: int, phase: str) -> str:
            got = count(out("pe", r))
            return self.summary_check(self.work / f"numbered-{tag}-{r}.out", n) or \
                ("" if got == present else f"{got} of {present} pictures")

        def gdl(r: int, phase: str) -> Command:  # a 404 makes gallery-dl exit 4 (download errors)
            return Command(shlex.split(self.args.gallery_dl) + ["--config-ignore", "-i", str(urls),
                                                                "-D", str(out("gallery-dl", r))], ok_codes=(0, 4))

        def gdl_check(r: int, phase: str) -> str:
            got = count(out("gallery-dl", r))
            return "" if got == present else f"{got} of {present} pictures"

        where = f"answering after {latency_ms:g} ms" if latency_ms else "on bare loopback"
        return Race("numbered" + ("" if latency_ms else "-loopback"),
                    f"{n} numbered URLs, {n - present} missing, host {where}", "gallery-dl",
                    [Contender("photo-escape", ours, ours_check, note=in_flight),
                     Contender("gallery-dl", gdl, gdl_check, note=in_flight)])

    # gallery site -> folder
    def race_gallery(self) -> Race:
        n = self.args.gallery
        g = self.servers.start("sandbox.gallery", "--count", str(n), "--size", self.args.gallery_size, "--warm",
                               "--cache-dir", str(self.data / f"gallery-{self.args.gallery_size}"))

        def out(who: str, r: int) -> Path:
            return self.work / f"gallery-{who}-{r}"

        def ours(r: int, phase: str) -> Command:
            source = {"kind": "gallery",
                      "login": {"url": f"{g['site']}/", "fields": {"username": g["username"]},
                                "secret_fields": {"password": {"env": "PEERS_GALLERY_PASSWORD"}}},
                      "pages": {"url": f"{g['site']}/Frame/AllPictures?p={{page}}", "first": 1,
                                "last_when_fewer_than": 48},
                      "images": {"css": "img", "attribute": "src", "contains": "~t~",
                                 "rewrite": [{"from": "~t~", "to": "~a~"}]},
                      "expected_count": n}
            job = self.job(f"gallery-{r}", source, {"kind": "local", "path": str(out("pe", r))})
            cmd = self.photo_escape(job, f"gallery-{r}", stdout=self.work / f"gallery-{r}.out")
            cmd.env["PEERS_GALLERY_PASSWORD"] = g["password"]
            return cmd

        def ours_check(r: int, phase: str) -> str:
            got = sum(1 for _ in out("pe", r).rglob("*.jpg")) if out("pe", r).is_dir() else 0
            return self.summary_check(self.work / f"gallery-{r}.out", n) or ("" if got == n else f"{got} of {n}")

        def scrapy(r: int, phase: str) -> Command:  # bench/download.py's spider, a process of its own
            out("scrapy", r).mkdir(parents=True, exist_ok=True)
            return Command([sys.executable, str(ROOT / "bench" / "download.py"), "--worker", "scrapy", "--site",
                            g["site"], "--password", g["password"], "--out", str(out("scrapy", r)),
                            "--concurrency", str(CONCURRENCY)], {"PYTHONPATH": str(ROOT)})

        def scrapy_check(r: int, phase: str) -> str:
            full = out("scrapy", r) / "images" / "full"
            got = sum(1 for _ in full.glob("*.jpg")) if full.is_dir() else 0
            return "" if got == n else f"{got} of {n}"

        return Race("gallery", f"the photo-frame gallery: login, {-(-n // 48)} pages, {n} originals",
                    "scrapy", [Contender("photo-escape", ours, ours_check), Contender("scrapy", scrapy, scrapy_check)])

    # capture times of the folder
    def race_capture(self) -> Race:
        folder = camera_folder(self.data, self.args.photos)
        n = self.args.photos

        def lines(path: Path) -> int:
            try:
                text = path.read_text()
            except OSError:
                return 0
            if text.lstrip().startswith("["):
                return len(json.loads(text))
            return sum(1 for ln in text.splitlines() if ln.strip())

        def ours(r: int, phase: str) -> Command:
            return Command(self.pe + ["capture-time", str(folder), "--json"], dict(self.pe_env),
                           stdout=self.work / f"capture-pe-{r}.out")

        def exiftool(r: int, phase: str) -> Command:
            return Command(["exiftool", "-json", "-r", "-ext", "jpg", "-DateTimeOriginal", "-OffsetTimeOriginal",
                            "-SubSecTimeOriginal", "-GPSDateTime", "-GPSLatitude", "-GPSLongitude", str(folder)],
                           stdout=self.work / f"capture-exiftool-{r}.out")

        def check(who: str) -> Callable[[int, str], str]:
            def check_(r: int, phase: str) -> str:
                got = lines(self.work / f"capture-{who}-{r}.out")
                return "" if got == n else f"{got} of {n} answers"
            return check_

        return Race("capture", f"capture times of {n} JPEGs", "exiftool",
                    [Contender("photo-escape", ours, check("pe")), Contender("exiftool", exiftool, check("exiftool"))])


class WarmServer:
    """``photo-escape server start`` for a benchmark (its Prefect server and its warm runner),
    in the benchmark's own PHOTO_ESCAPE_HOME, with the environment the timed runs get (the
    runner serves only runs with its Prefect settings); stopped at the end."""

    def __init__(self, pe: list[str], env: dict[str, str]) -> None:
        self.pe, self.env = pe, env

    def _cli(self, *words: str) -> dict:
        out = subprocess.run(self.pe + ["server", *words, "--json"], env=command_environment(self.env), cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        lines = out.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else {"error": out.stderr[-2000:]}

    def __enter__(self) -> "WarmServer":
        state = self._cli("start", "--port", "0")
        if not state.get("running"):
            raise SystemExit(f"photo-escape server start failed: {state}")
        deadline = time.monotonic() + 120
        while not self._cli("status").get("runner"):
            if time.monotonic() > deadline:
                raise SystemExit("the warm runner did not become ready in 120 s")
            time.sleep(0.5)
        print(f"photo-escape server running (warm runner ready): {state['ui_url']}", flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._cli("stop")


def default_photo_escape() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m photo_escape.cli``."""
    script = Path(sys.executable).with_name("photo-escape")
    return [str(script)] if script.exists() else [sys.executable, "-m", "photo_escape.cli"]


def missing_tools(race: str, args: argparse.Namespace) -> str:
    need = {"s3": ["rclone"], "first": ["rclone"], "folder": ["rclone"], "numbered": [shlex.split(args.gallery_dl)[0]],
            "numbered-loopback": [shlex.split(args.gallery_dl)[0]], "capture": ["exiftool"]}.get(race, [])
    return ", ".join(t for t in need if not shutil.which(t))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--races", default=",".join(RACES), help=f"comma-separated, of: {', '.join(RACES)}")
    ap.add_argument("--photos", type=int, default=1000, help="JPEGs in the folder (s3, folder, capture)")
    ap.add_argument("--numbered", type=int, default=1000, help="numbered URLs (a quarter missing)")
    ap.add_argument("--gallery", type=int, default=1374, help="pictures in the gallery")
    ap.add_argument("--numbered-size", default="640x480", help="the numbered host's pictures, WxH")
    ap.add_argument("--gallery-size", default="640x480", help="the gallery's originals, WxH")
    ap.add_argument("--latency-ms", type=float, default=30.0, help="the numbered host's delay before each answer")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    ap.add_argument("--timeout", type=float, default=1800.0, help="time limit of one command, seconds")
    ap.add_argument("--no-thumbnails", action="store_true",
                    help="s3: leave out photo-escape's run with thumbnails (e.g. for the rerun at 20,000 photos)")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run: 12 photos, 40 URLs, 60 pictures, 1 round")
    ap.add_argument("--photo-escape", help="photo-escape's command (default: the console script beside this Python)")
    ap.add_argument("--gallery-dl", default=os.environ.get("GALLERY_DL", "/tmp/gdl-venv/bin/gallery-dl"),
                    help="gallery-dl's command (installed in its own environment)")
    ap.add_argument("--prefect-api", help="PREFECT_API_URL of a running Prefect server (default: a temporary one per run)")
    ap.add_argument("--prefect-home", help="PREFECT_HOME for photo-escape (default: <data>/prefect-home)")
    ap.add_argument("--server", action="store_true",
                    help="run with `photo-escape server start` up (its Prefect server and warm runner), "
                         "started and stopped by the benchmark in its own PHOTO_ESCAPE_HOME")
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "photo-escape-bench-peers"),
                    help="where the pictures are made once and kept")
    ap.add_argument("--work", help="where each run's folders, ledgers and outputs go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--json-out", help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.photos, args.numbered, args.gallery, args.rounds = 12, 40, 60, 1
        args.timeout = min(args.timeout, 600)
    races = [r.strip() for r in args.races.split(",") if r.strip()]
    unknown = [r for r in races if r not in RACES]
    if unknown:
        ap.error(f"unknown race(s): {', '.join(unknown)}")

    load = os.getloadavg()
    print(f"photo-escape: {' '.join(default_photo_escape() if not args.photo_escape else shlex.split(args.photo_escape))}")
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} cores; "
          f"{args.rounds} round(s)", flush=True)
    bench = Bench(args)
    results, skipped = [], {}
    server = None
    try:
        if args.server:
            bench.pe_env["PHOTO_ESCAPE_HOME"] = str(bench.work / "pe-home")
            server = WarmServer(bench.pe, bench.pe_env).__enter__()
        bench.warm_up()
        for name in races:
            missing = missing_tools(name, args)
            if missing:
                skipped[name] = f"not installed: {missing}"
                print(f"{name}: skipped ({skipped[name]})", flush=True)
                continue
            race = {"s3": bench.race_s3, "first": bench.race_first, "folder": bench.race_folder, "gallery": bench.race_gallery,
                    "capture": bench.race_capture, "numbered": lambda: bench.race_numbered(args.latency_ms),
                    "numbered-loopback": lambda: bench.race_numbered(0)}[name]()
            print(f"{race.name}: {race.what}", flush=True)
            results.append(run_race(race, args.rounds, args.timeout))
    finally:
        if server is not None:
            server.__exit__()
        bench.servers.stop()
        if not args.keep:
            shutil.rmtree(bench.work, ignore_errors=True)
    load_after = os.getloadavg()

    print(f"\nmedians of {args.rounds} alternating round(s), whole commands from the shell, start-up included")
    print(f"{'race':18s} {'phase':11s} {'contender':26s} {'peer':11s} {'peer s':>9s} {'ours s':>9s} {'ratio':>7s}")
    for res in results:
        for row in res["rows"]:
            ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
            peer_s = "" if row["peer_seconds"] is None else f"{row['peer_seconds']:.2f}"
            print(f"{row['race']:18s} {row['phase']:11s} {row['contender']:26s} {row['peer']:11s} "
                  f"{peer_s:>9s} {row['seconds']:9.2f} {ratio:>7s}")
        for p in res["problems"]:
            print(f"  PROBLEM {res['race']}: {p[:300]}")
    print("ratio: photo-escape's time / the peer's (above 1: photo-escape is slower)")
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    report = {"rounds": args.rounds, "photos": args.photos, "numbered": args.numbered, "gallery": args.gallery,
              "latency_ms": args.latency_ms, "load_before": load, "load_after": load_after,
              "prefect_api": args.prefect_api, "server": args.server, "results": results, "skipped": skipped}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 1 if any(res["problems"] for res in results) else 0


if __name__ == "__main__":
    sys.exit(main())
