"""A synthetic source and a discarding destination, for the scale benchmark.

``source.kind: synthetic`` lists ``count`` made-up photos and "fetches" each one by
waiting ``work_ms`` (a stand-in for a download: I/O-bound time on a thread pool of
``options.concurrency``); ``destination.kind: discard`` accepts everything. The
listing, the ledger, the batching, the Prefect task runs and the report are the
real ones, so what the benchmark measures beyond the stand-in is orchestration.
Importing this module registers both kinds.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Literal

from pydantic import Field

from photo_escape.outcomes import outcome
from photo_escape.plugins import Destination, KindConfig, Source


class SyntheticConfig(KindConfig):
    kind: Literal["synthetic"]
    count: int = Field(1000, ge=0)
    work_ms: float = Field(10.0, ge=0)


def stand_in_work(item: dict, work_ms: float) -> dict:
    """The per-item work both the flow and the plain loop do: wait, then 'hash' the id."""
    if work_ms:
        time.sleep(work_ms / 1000.0)
    sha = hashlib.sha256(item["item_id"].encode()).hexdigest()
    return dict(item, sha256=sha, bytes=1000)


def synthetic_items(count: int, page: int = 1000) -> Iterator[list[dict]]:
    for start in range(0, count, page):
        yield [{"item_id": f"syn:{n:08d}", "source_ref": f"synthetic://{n}", "name": f"{n:08d}.jpg"}
               for n in range(start, min(count, start + page))]


class SyntheticSource(Source):
    kind = "synthetic"
    Config = SyntheticConfig
    pipeline = ("fetch", "deliver")

    def list_pages(self) -> Iterator[list[dict]]:
        return synthetic_items(self.config.count)

    def fetch(self, items: list[dict]) -> list[dict]:
        workers = getattr(self.options, "concurrency", 8)
        with ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(lambda it: stand_in_work(it, self.config.work_ms), items))
        return [outcome(d["item_id"], "fetch", "ok", None, bytes=d["bytes"], sha256=d["sha256"]) | {"item": d}
                for d in done]


class DiscardConfig(KindConfig):
    kind: Literal["discard"]


class DiscardDestination(Destination):
    kind = "discard"
    Config = DiscardConfig

    def deliver(self, items: list[dict], dry_run: bool = False) -> list[dict]:
        return [outcome(i["item_id"], "deliver", "ok", "discarded", final=True) | {"item": i} for i in items]
