"""``source.kind: numbered``: pictures at numbered URLs, many of them missing.

    source:
      kind: numbered
      url: "http://host/gallery/full/{n}.jpg"    # {n} or a format such as {n:05d}
      start: 1
      stop: 20000                                # inclusive
      stop_after_missing: 200                    # optional: end after 200 misses in a row
      http: {per_host: 4, rate_per_host: 10}     # optional politeness

Every number from ``start`` to ``stop`` is listed (in pages, as the flow asks for
them) and fetched politely; a number the host does not have (404) ends as
``skipped`` with reason ``not_found``: it was never there, nothing failed.

``stop_after_missing: N`` needs what the fetches found, so the source keeps a
:class:`MissingRun` per run (shared by the listing and the fetch batches of one
process): the listing stops making new pages once N consecutive numbers are known
to be missing, and a fetch batch works through its numbers in order, ``concurrency``
in flight all the time (the next number starts as soon as any request ends),
skipping (reason ``stopped_after_missing``) the numbers past such a run.
"""

from __future__ import annotations

import re
import string
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Literal

from pydantic import Field, field_validator, model_validator

from photo_escape.outcomes import outcome
from photo_escape.plugins import KindConfig, Source
from tasks.download import Downloader, HttpSettings, safe_name, url_key


class NumberedSourceConfig(KindConfig):
    kind: Literal["numbered"]
    url: str = Field(description="URL template with {n} (or a format like {n:05d}) where the number goes")
    start: int = Field(1, ge=0, description="first number")
    stop: int = Field(description="last number (inclusive)")
    stop_after_missing: int | None = Field(None, ge=1, description="end after this many consecutive misses")
    soft_404: bool = Field(False, description="an answer that is not an image (a 'not found' page served "
                                              "with status 200) means the number is missing too")
    http: HttpSettings = Field(default_factory=HttpSettings)

    @field_validator("url")
    @classmethod
    def _template(cls, v: str) -> str:
        fields = [f for _, f, _, _ in string.Formatter().parse(v) if f is not None]
        if fields != ["n"]:
            raise ValueError("must contain {n} (or e.g. {n:05d}) once, and no other {...} field")
        v.format(n=1)
        return v

    @model_validator(mode="after")
    def _range(self) -> "NumberedSourceConfig":
        if self.stop < self.start:
            raise ValueError(f"stop ({self.stop}) must not be smaller than start ({self.start})")
        return self


class MissingRun:
    """The misses found so far, and the number after which the collection has ended
    (the first run of ``limit`` consecutive missing numbers)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.missing: set[int] = set()
        self.end: int | None = None  # numbers >= end are past the run
        self._lock = threading.Lock()

    def saw(self, n: int, present: bool) -> None:
        """Record that number ``n`` is there (or not)."""
        if present or self.limit is None:
            return
        with self._lock:
            self.missing.add(n)
            lo = hi = n
            while lo - 1 in self.missing:
                lo -= 1
            while hi + 1 in self.missing:
                hi += 1
            if hi - lo + 1 >= self.limit:
                end = lo + self.limit
                self.end = end if self.end is None else min(self.end, end)

    def ended_before(self, n: int) -> bool:
        """Whether ``n`` comes after a run of ``limit`` misses."""
        return self.end is not None and n >= self.end


_RUNS: dict[str, MissingRun] = {}
_RUNS_LOCK = threading.Lock()


def _missing_run(key: str, limit: int | None) -> MissingRun:
    with _RUNS_LOCK:
        return _RUNS.setdefault(key, MissingRun(limit))


class NumberedSource(Source):
    kind = "numbered"
    Config = NumberedSourceConfig

    def __init__(self, config: NumberedSourceConfig, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.config: NumberedSourceConfig = config
        self.downloader = Downloader.from_options(config.http, self.options)
        self.page_size = getattr(self.options, "batch_size", 200) or 200
        key = f"{self.workdir.resolve()}|{config.url}|{config.start}|{config.stop_after_missing}"
        self.misses = _missing_run(key, config.stop_after_missing)
        self._per_name = not re.search(r"\{n[^}]*\}[^/]*$", config.url)  # the number is not in the file name

    def url(self, n: int) -> str:
        return self.config.url.format(n=n)

    def item(self, n: int) -> dict:
        url = self.url(n)
        name = safe_name(url)
        if self._per_name:  # e.g. /photos/{n}/full.jpg: every file has the same last segment
            name = f"{n}-{url_key(url, 6)}-{name}"
        return {"item_id": url, "source_ref": url, "name": name, "url": url, "n": n}

    def list_pages(self) -> Iterator[list[dict]]:
        """The numbers start..stop in pages; stops early once a long enough run of misses is known."""
        c = self.config
        for first in range(c.start, c.stop + 1, self.page_size):
            if self.misses.ended_before(first):
                break
            yield [self.item(n) for n in range(first, min(first + self.page_size, c.stop + 1))
                   if not self.misses.ended_before(n)]

    def fetch(self, items: list[dict]) -> list[dict]:
        """Download a batch; a 404 is ``skipped``/``not_found``. With ``stop_after_missing``
        the batch goes in number order, ``concurrency`` at a time (a sliding window, not
        rounds that wait for their slowest), so a run of misses stops it as soon as it is seen."""
        dest = self.workdir / "numbered"
        if self.config.stop_after_missing is None:
            return [self._missing(o) for o in self.downloader.fetch_items(items, dest, missing="skipped")]

        def one(it: dict) -> dict:
            if self.misses.ended_before(it["n"]):
                return outcome(it["item_id"], "fetch", "skipped", "stopped_after_missing",
                               detail={"url": it["url"], "after": self.misses.end})
            (out,) = self.downloader.fetch_items([it], dest, missing="skipped")
            out = self._missing(out)
            self.misses.saw(it["n"], present=out["reason"] != "not_found")
            return out

        ordered = sorted(items, key=lambda i: i.get("n", 0))
        workers = max(1, min(self.downloader.concurrency, len(ordered)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="numbered") as pool:
            results = {it["item_id"]: out for it, out in zip(ordered, pool.map(one, ordered))}
        return [results[i["item_id"]] for i in items]

    def _missing(self, out: dict) -> dict:
        """With ``soft_404``, a 'not found' page served with status 200 is a miss, not a failure."""
        if self.config.soft_404 and out["outcome"] == "failed" and out["reason"] == "not_an_image":
            return dict(out, outcome="skipped", reason="not_found", detail=dict(out["detail"], soft_404=True))
        return out

    def report_facts(self) -> dict[str, Any]:
        c = self.config
        facts: dict[str, Any] = {"numbers": f"{c.start}..{c.stop}"}
        if c.stop_after_missing:
            facts["stop_after_missing"] = c.stop_after_missing
            facts["ended_at"] = None if self.misses.end is None else self.misses.end - 1
        return facts

    def close(self) -> None:
        self.downloader.close()
