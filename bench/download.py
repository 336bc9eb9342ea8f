"""Benchmark: rescuing the sandbox gallery, photo-escape against scrapy's ImagesPipeline.

The original rescue used a scrapy spider with the ImagesPipeline. Here both tools
log in to the same sandbox photo-frame site (run in its own process, originals made
beforehand so both measure transfer, not picture making), walk its pages of 48
thumbnails, rewrite ``~t~`` to ``~a~`` and download every original, with the same
concurrency and no artificial delay, in alternating rounds, each a whole process
timed from outside (start-up included):

* **photo-escape**: ``photo-escape run`` of the gallery job to a local folder: the
  listing and fetch (streamed to disk, sha256 while streaming, Content-Length and
  image-signature checks, atomic rename), hashing, capture times, delivery, the
  ledger, the report and Prefect, as a user runs it;
* **scrapy**: the spider from the original write-up (FormRequest login, ``parse``
  following pages while a page has 48 images) with ``ImagesPipeline`` (which
  decodes each image with Pillow and re-encodes it as JPEG), the whole process
  (not scrapy's own ``elapsed_time_seconds``, which leaves out its start-up).

Prints images per second for both and the ratio (photo-escape / scrapy).

    .venv/bin/python bench/download.py                      # quick: 300 images, 1 round
    .venv/bin/python bench/download.py --count 1374 --rounds 3 --size 1024x768   # recorded figure
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
PREFECT_HOME = Path(tempfile.gettempdir()) / "photo-escape-bench-download-prefect"


# -- the peer, run in its own process ---------------------------------------------------
def run_scrapy(site: str, password: str, out: Path, concurrency: int, pipeline: str = "images") -> dict:
    """The original rescue's spider with ImagesPipeline (or, for reference, FilesPipeline,
    which stores the bytes as they came), at the same concurrency."""
    import scrapy
    import scrapy.downloadermiddlewares.cookies as cookie_mw
    from scrapy.crawler import CrawlerProcess
    from tldextract import TLDExtract

    # offline: the public suffix list from tldextract's bundled snapshot, not the network
    cookie_mw._split_domain = TLDExtract(include_psl_private_domains=True, suffix_list_urls=())

    class ImageItem(scrapy.Item):
        image_urls = scrapy.Field()
        images = scrapy.Field()
        file_urls = scrapy.Field()
        files = scrapy.Field()

    url_field = "image_urls" if pipeline == "images" else "file_urls"

    class KodakPulseSpider(scrapy.Spider):
        name = "KodakPulseSpider"
        base_url = site
        page = 1

        async def start(self):
            yield scrapy.FormRequest(self.base_url + "/", formdata={"username": "alice", "password": password},
                                     method="POST", callback=self.logged_in)

        def logged_in(self, response):
            return scrapy.Request(self.base_url + "/Frame/AllPictures?p=1", callback=self.parse)

        def parse(self, response):
            images = [u for u in response.css("img").xpath("@src").getall() if "~t~" in u]
            yield ImageItem(**{url_field: [u.replace("~t~", "~a~") for u in images]})
            if len(images) < 48:
                return
            self.page += 1
            yield scrapy.Request(f"{self.base_url}/Frame/AllPictures?p={self.page}", callback=self.parse)

    stats: dict = {}
    process = CrawlerProcess(settings={
        "ITEM_PIPELINES": {"scrapy.pipelines.images.ImagesPipeline" if pipeline == "images"
                           else "scrapy.pipelines.files.FilesPipeline": 1},
        "IMAGES_STORE": str(out / "images"),
        "FILES_STORE": str(out / "images"),
        "CONCURRENT_REQUESTS": concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency,
        "DOWNLOAD_DELAY": 0,
        "AUTOTHROTTLE_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "LOG_LEVEL": os.environ.get("BENCH_SCRAPY_LOG", "ERROR"),
        "TELNETCONSOLE_ENABLED": False,
        "COOKIES_ENABLED": True,
    })
    crawler = process.create_crawler(KodakPulseSpider)
    started = time.perf_counter()
    process.crawl(crawler)
    process.start()
    wall = time.perf_counter() - started
    stats = crawler.stats.get_stats()
    files = sum(1 for _ in (out / "images" / "full").glob("*.jpg")) if (out / "images" / "full").is_dir() else 0
    # scrapy's own clock, spider opened -> closed: leaves out the reactor's start-up (in its favour)
    seconds = float(stats.get("elapsed_time_seconds") or wall)
    return {"tool": "scrapy" if pipeline == "images" else "scrapy-files", "images": files, "seconds": seconds, "wall_seconds": wall,
            "file_count": stats.get("file_count"), "requests": stats.get("downloader/request_count")}


# -- the harness ------------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    res = run_scrapy(args.site, args.password, Path(args.out), args.concurrency,
                     "images" if args.worker == "scrapy" else "files")
    print("RESULT " + json.dumps(res), flush=True)


def gallery_job(sandbox: dict, out: Path, args: argparse.Namespace) -> Path:
    """The rescue's job file for the sandbox gallery, to a local folder."""
    import yaml

    source = {
        "kind": "gallery",
        "login": {"url": f"{sandbox['site']}/", "fields": {"username": sandbox["username"]},
                  "secret_fields": {"password": {"env": "KODAK_PASSWORD"}}},
        "pages": {"url": f"{sandbox['site']}/Frame/AllPictures?p={{page}}", "first": 1, "last_when_fewer_than": 48},
        "images": {"css": "img", "attribute": "src", "contains": "~t~", "rewrite": [{"from": "~t~", "to": "~a~"}]},
        "expected_count": sandbox["count"],
    }
    job = {"name": "bench-download", "ledger": str(out / "ledger.duckdb"), "work_dir": str(out / "work"),
           "reports_dir": str(out / "reports"), "source": source,
           "destination": {"kind": "local", "path": str(out / "dest")},
           "options": {"batch_size": args.batch_size, "concurrency": args.concurrency}}
    path = out / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def contender(tool: str, sandbox: dict, args: argparse.Namespace) -> dict:
    """One whole process, timed from outside; the images that arrived."""
    from bench.peers import Command, default_photo_escape, timed

    out = Path(tempfile.mkdtemp(prefix=f"bench-{tool}-"))
    try:
        if tool == "photo-escape":
            pe = shlex.split(args.photo_escape) if args.photo_escape else default_photo_escape()
            cmd = Command(pe + ["run", str(gallery_job(sandbox, out, args)), "--json"],
                          {"KODAK_PASSWORD": sandbox["password"], "PREFECT_HOME": str(PREFECT_HOME),
                           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
        else:
            cmd = Command([sys.executable, str(Path(__file__).resolve()), "--worker", tool, "--site", sandbox["site"],
                           "--password", sandbox["password"], "--out", str(out), "--concurrency",
                           str(args.concurrency)], {"PYTHONPATH": str(ROOT)})
        seconds, error = timed(cmd, 1800)
        if error:
            raise SystemExit(f"{tool} failed: {error}")
        found = out / ("dest" if tool == "photo-escape" else "images/full")
        return {"tool": tool, "images": sum(1 for _ in found.rglob("*.jpg")), "seconds": seconds}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description="photo-escape vs scrapy ImagesPipeline on the sandbox gallery")
    ap.add_argument("--count", type=int, default=300, help="images in the gallery (1374 for the recorded figure)")
    ap.add_argument("--size", default="640x480", help="originals' size, WxH")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight, the same for both")
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds; the median is reported")
    ap.add_argument("--files-pipeline", action="store_true",
                    help="also run scrapy with FilesPipeline (bytes stored as they came, no re-encoding), for reference")
    ap.add_argument("--photo-escape", help="photo-escape's command (default: the console script beside this Python)")
    ap.add_argument("--worker", choices=["scrapy", "scrapy-files"], help=argparse.SUPPRESS)
    ap.add_argument("--site", help=argparse.SUPPRESS)
    ap.add_argument("--password", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    cache = Path(tempfile.mkdtemp(prefix="bench-gallery-cache-"))
    server = subprocess.Popen([sys.executable, "-m", "sandbox.gallery", "--count", str(args.count), "--size",
                               args.size, "--cache-dir", str(cache), "--warm"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        sandbox = json.loads(server.stdout.readline())
        tools = ["photo-escape", "scrapy"] + (["scrapy-files"] if args.files_pipeline else [])
        contender("photo-escape", sandbox, args)  # untimed: Prefect's database made, caches filled
        results: dict[str, list[dict]] = {t: [] for t in tools}
        for r in range(args.rounds):
            order = tools if r % 2 == 0 else tools[::-1]
            for tool in order:
                res = contender(tool, sandbox, args)
                results[tool].append(res)
                print(f"round {r + 1}: {tool:13s} {res['images']:5d} images in {res['seconds']:6.2f} s "
                      f"= {res['images'] / res['seconds']:7.1f} images/s", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(cache, ignore_errors=True)

    def rate(tool: str) -> float:
        return statistics.median(r["images"] / r["seconds"] for r in results[tool])

    pe, sc = rate("photo-escape"), rate("scrapy")
    complete = all(r["images"] == args.count for rs in results.values() for r in rs)
    summary = {"count": args.count, "size": args.size, "concurrency": args.concurrency, "rounds": args.rounds,
               "photo_escape_images_per_s": round(pe, 1), "scrapy_images_per_s": round(sc, 1),
               "ratio": round(pe / sc, 2), "all_images_arrived": complete}
    print(f"photo-escape {pe:.1f} images/s, scrapy ImagesPipeline {sc:.1f} images/s: "
          f"ratio {pe / sc:.2f}x (median of {args.rounds} round(s), {args.count} images of {args.size}, "
          f"concurrency {args.concurrency}; every image arrived: {complete})")
    if args.files_pipeline:
        sf = rate("scrapy-files")
        summary.update(scrapy_files_images_per_s=round(sf, 1), ratio_vs_files_pipeline=round(pe / sf, 2))
        print(f"for reference, scrapy FilesPipeline (no re-encoding) {sf:.1f} images/s: ratio {pe / sf:.2f}x")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
