"""Scraping: payload rules, page parsing, and whole scrapes through real scraping workers.

The end-to-end tests run two worker processes for the module: the normal ``scraping`` worker
(session environment: 127.0.0.1/32 allowed) and a strict one on its own queue whose allow-list
is empty, so the refusal of a loopback page is checked in a worker configured like production.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from imagineer_worker import images
from imagineer_worker.storage import read_json
from imagineer_worker.tasks import scraping
from imagineer_worker.tasks.base import InvalidPayload, validate
from imagineer_worker.tasks.scraping import TASK_NAME, ScrapePayload, image_links, scrape_dataset
from imagineer_worker.testing.fixture_site import CAPTIONS, FixtureSite, make_large_png, make_png
from imagineer_worker.testing.services import CeleryProcess, wait_for

TIMEOUT = 30
STRICT_QUEUE = "scraping-strict"


def _dataset() -> str:
    return f"ds-{uuid.uuid4().hex[:8]}"


def _files(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(directory.iterdir())}


# --- payload and parsing (no worker) --------------------------------------------------------------


@pytest.mark.parametrize(("payload", "expected"), [
    ({"dataset_id": "d", "urls": ["http://a/x.png"], "page_url": "http://a/"},
     "give exactly one of 'urls' and 'page_url' (got both)"),
    ({"dataset_id": "d"}, "give exactly one of 'urls' and 'page_url' (got neither)"),
    ({"dataset_id": "../etc", "page_url": "http://a/"},
     "dataset_id: Value error, invalid dataset_id '../etc'"),
    ({"dataset_id": "d", "page_url": "http://a/", "max_images": 0}, "max_images: Input should be greater"),
    ({"dataset_id": "d", "page_url": "http://a/", "max_images": 10001}, "max_images: Input should be less"),
    ({"dataset_id": "d", "urls": []}, "urls: List should have at least 1 item"),
    ({"dataset_id": "d", "page_url": "http://a/", "depth": 2}, "depth: Extra inputs are not permitted"),
])
def test_payload_rules(payload: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        validate(ScrapePayload, payload)
    assert expected in str(info.value)


def test_image_links_resolve_against_base_and_keep_alt() -> None:
    html = """<html><head><base href="/media/"></head><body>
      <img src="a.png" alt=" A &amp; B "><img src="/b.png"><IMG SRC="https://cdn.example/c.png#x" alt="">
      <img alt="no source"><img src="  ">
    </body></html>"""
    assert image_links(html, "http://site.example/gallery/page.html") == [
        ("http://site.example/media/a.png", "A & B"),
        ("http://site.example/b.png", None),
        ("https://cdn.example/c.png", ""),
    ]


# --- the task in this process (eager), for per-URL outcomes ---------------------------------------


def test_each_bad_url_is_skipped_with_its_reason(celery_app: Any, data_dir: Path,
                                                 fixture_site: FixtureSite) -> None:
    base = fixture_site.base_url
    dataset_id = _dataset()
    urls = [
        f"{base}/img/1.png",
        f"{base}/redirect?to=/img/1.png",  # same bytes through another URL: a duplicate
        f"{base}/notes.txt",
        f"{base}/huge.png",                # image/png, but not a decodable image
        f"{base}/missing.png",
        "http://10.0.0.1/x.png",           # refused before any connection
        "ftp://127.0.0.1/x.png",
        f"{base}/img/2.png",
    ]
    outcome = scrape_dataset.apply(kwargs={"dataset_id": dataset_id, "urls": urls})
    result = outcome.get(timeout=TIMEOUT)
    assert {k: result[k] for k in ("images", "new", "duplicates", "skipped")} == {
        "images": 2, "new": 2, "duplicates": 1, "skipped": 5}
    manifest = read_json(data_dir / result["manifest"])
    assert manifest["source"] == {"urls": urls}
    reasons = {s["url"]: s["reason"] for s in manifest["skipped"]}
    assert reasons[f"{base}/notes.txt"] == "content type 'text/plain' is not image/*"
    assert reasons[f"{base}/huge.png"].startswith("not a valid image")
    assert reasons[f"{base}/missing.png"] == "HTTP 404"
    assert reasons["http://10.0.0.1/x.png"] == (
        "refused http://10.0.0.1/x.png: 10.0.0.1 is a private address (allow it with scraping.allow_networks)"
    )
    assert "only http and https" in reasons["ftp://127.0.0.1/x.png"]
    assert [i["url"] for i in manifest["items"]] == [f"{base}/img/1.png", f"{base}/img/2.png"]
    assert [i["alt"] for i in manifest["items"]] == [None, None]


def test_max_images_stops_the_scrape(celery_app: Any, data_dir: Path, fixture_site: FixtureSite) -> None:
    urls = [f"{fixture_site.base_url}/img/{i}.png" for i in range(4)]
    result = scrape_dataset.apply(kwargs={"dataset_id": _dataset(), "urls": urls, "max_images": 2}).get()
    manifest = read_json(data_dir / result["manifest"])
    assert [i["url"] for i in manifest["items"]] == urls[:2]
    assert len(list((data_dir / result["manifest"]).parent.joinpath("images").iterdir())) == 2


def test_soft_time_limit_is_not_swallowed_and_keeps_partial_work(
        celery_app: Any, data_dir: Path, fixture_site: FixtureSite, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fetch = scraping.fetch
    calls: list[str] = []

    def fetch_until_the_limit(url: str, **kwargs: Any) -> Any:
        calls.append(url)
        if len(calls) == 2:
            raise SoftTimeLimitExceeded()
        return real_fetch(url, **kwargs)

    monkeypatch.setattr(scraping, "fetch", fetch_until_the_limit)
    urls = [f"{fixture_site.base_url}/img/{i}.png" for i in range(3)]
    dataset_id = _dataset()
    outcome = scrape_dataset.apply(kwargs={"dataset_id": dataset_id, "urls": urls})
    assert isinstance(outcome.result, SoftTimeLimitExceeded)
    assert calls == urls[:2]  # the loop stopped at the limit
    manifest = read_json(data_dir / "scrapes" / dataset_id / "manifest.json")
    assert manifest["complete"] is False
    assert [i["url"] for i in manifest["items"]] == urls[:1]


def test_image_check_lets_the_soft_time_limit_through(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(images.Image, "open", interrupted)
    with pytest.raises(SoftTimeLimitExceeded):
        scraping.inspect_image(b"\x89PNG")


def test_image_check_rejects_non_images_and_unsafe_formats() -> None:
    with pytest.raises(ValueError, match="not a valid image"):
        scraping.inspect_image(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    with pytest.raises(ValueError, match="not a valid image"):  # EPS never reaches Ghostscript
        scraping.inspect_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n")
    assert scraping.inspect_image(make_png((1, 2, 3), size=8)) == ("png", 8, 8)


# Crafted images: a real 30,000 x 30,000 bomb (~110 KB of PNG, 900 M pixels), one row over the
# worker's pixel limit, and exactly at it. Generated here, streamed: never allocated as pixels.
LIMIT_WIDTH = 4096
AT_LIMIT = (LIMIT_WIDTH, images.MAX_IMAGE_PIXELS // LIMIT_WIDTH)
OVER_LIMIT = (LIMIT_WIDTH, images.MAX_IMAGE_PIXELS // LIMIT_WIDTH + 1)


def test_image_check_refuses_images_over_the_pixel_limit() -> None:
    for width, height in ((30_000, 30_000), OVER_LIMIT):
        with pytest.raises(ValueError, match=rf"^image is {width}x{height} pixels .*over the limit of "
                                             rf"{images.MAX_IMAGE_PIXELS:,} pixels"):
            scraping.inspect_image(make_large_png(width, height))
    assert scraping.inspect_image(make_large_png(*AT_LIMIT)) == ("png", *AT_LIMIT)


# --- real workers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scraping_workers(module_workers: Any,
                     tmp_path_factory: pytest.TempPathFactory) -> tuple[CeleryProcess, CeleryProcess]:
    normal = module_workers("scraping", concurrency=2, wait=False)
    # An empty env value counts as unset, so the file decides: an explicitly empty allow-list.
    config = tmp_path_factory.mktemp("strict") / "config.yaml"
    config.write_text("scraping:\n  allow_networks: []\n")
    strict = module_workers(STRICT_QUEUE, wait=False, env={
        "IMAGINEER_SCRAPING_ALLOW_NETWORKS": "", "IMAGINEER_CONFIG": str(config)})
    for worker in (normal, strict):  # started together: the two start-ups overlap
        wait_for(lambda w=worker: (w.health_dir / "ready").exists() or w.proc.poll() is not None,
                 60, f"worker {worker.name}")
        assert worker.proc is not None
        assert worker.proc.poll() is None, worker.log()[-3000:]
    return normal, strict


def _scrape(celery_app: Any, queue: str | None = None, **payload: Any) -> Any:
    options = {"queue": queue} if queue else {}
    return celery_app.send_task(TASK_NAME, kwargs=payload, **options)


def test_gallery_scrape_end_to_end_and_idempotent(scraping_workers: Any, celery_app: Any, data_dir: Path,
                                                  fixture_site: FixtureSite) -> None:
    dataset_id = _dataset()
    page = fixture_site.base_url + "/gallery.html"
    result = _scrape(celery_app, dataset_id=dataset_id, page_url=page).get(timeout=TIMEOUT)

    assert result == {"dataset_id": dataset_id, "manifest": f"scrapes/{dataset_id}/manifest.json",
                      "images": 4, "new": 4, "duplicates": 1, "skipped": 1}
    scrape_dir = data_dir / "scrapes" / dataset_id
    manifest = read_json(scrape_dir / "manifest.json")
    assert manifest["dataset_id"] == dataset_id
    assert manifest["source"] == {"page_url": page}
    assert manifest["complete"] is True
    assert [i["alt"] for i in manifest["items"]] == CAPTIONS
    assert [i["url"] for i in manifest["items"]] == [f"{fixture_site.base_url}/img/{n}.png" for n in range(4)]
    for item in manifest["items"]:
        blob = (data_dir / item["path"]).read_bytes()
        assert item["file"] == f"images/{item['sha256']}.png"
        assert item["path"] == f"scrapes/{dataset_id}/{item['file']}"
        assert hashlib.sha256(blob).hexdigest() == item["sha256"]
        assert (item["bytes"], item["width"], item["height"], item["content_type"]) == (
            len(blob), 64, 64, "image/png")
    assert manifest["skipped"] == [{"url": fixture_site.base_url + "/notes.txt",
                                    "reason": "content type 'text/plain' is not image/*"}]
    files = _files(scrape_dir / "images")
    assert len(files) == 4

    again = _scrape(celery_app, dataset_id=dataset_id, page_url=page).get(timeout=TIMEOUT)
    assert again == {**result, "new": 0}
    rerun = read_json(scrape_dir / "manifest.json")
    assert rerun["items"] == manifest["items"]
    assert rerun["created_at"] == manifest["created_at"]
    assert _files(scrape_dir / "images") == files  # nothing rewritten, nothing added


def test_both_sources_fail_once_without_retry(scraping_workers: Any, celery_app: Any) -> None:
    normal, _ = scraping_workers
    outcome = _scrape(celery_app, dataset_id=_dataset(), urls=["http://127.0.0.1/a.png"],
                      page_url="http://127.0.0.1/")
    outcome.get(timeout=TIMEOUT, propagate=False)
    assert outcome.state == "FAILURE"
    assert isinstance(outcome.result, InvalidPayload)
    assert "give exactly one of 'urls' and 'page_url' (got both)" in str(outcome.result)
    assert outcome.retries == 0
    assert normal.log().count(f"[{outcome.id}] received") == 1


def test_refused_page_fails_the_task_with_the_reason(scraping_workers: Any, celery_app: Any,
                                                     data_dir: Path, fixture_site: FixtureSite) -> None:
    _, strict = scraping_workers
    dataset_id = _dataset()
    page = fixture_site.base_url + "/gallery.html"
    hits_before = list(fixture_site.hits)
    outcome = _scrape(celery_app, STRICT_QUEUE, dataset_id=dataset_id, page_url=page)
    outcome.get(timeout=TIMEOUT, propagate=False)
    assert outcome.state == "FAILURE"
    assert str(outcome.result) == (f"page_url refused {page}: 127.0.0.1 is a loopback address "
                                   "(allow it with scraping.allow_networks)")
    assert isinstance(outcome.result, InvalidPayload)  # never retried
    assert fixture_site.hits == hits_before  # refused before connecting
    assert not (data_dir / "scrapes" / dataset_id).exists()
    assert strict.log().count(f"[{outcome.id}] received") == 1


@pytest.fixture(scope="module")
def crafted_images(fixture_site: FixtureSite) -> dict[str, str]:
    """Serve the crafted images from the fixture site (its routes read ``images`` per request)."""
    paths = {"bomb": "/crafted/bomb-30000.png", "over": "/crafted/over-limit.png",
             "at": "/crafted/at-limit.png"}
    sizes = {"bomb": (30_000, 30_000), "over": OVER_LIMIT, "at": AT_LIMIT}
    for key, path in paths.items():
        fixture_site.images[path] = make_large_png(*sizes[key])
    return {key: fixture_site.base_url + path for key, path in paths.items()}


def test_decompression_bombs_are_skipped_and_the_worker_keeps_consuming(
        scraping_workers: Any, celery_app: Any, data_dir: Path, fixture_site: FixtureSite,
        crafted_images: dict[str, str]) -> None:
    normal, _ = scraping_workers
    dataset_id = _dataset()
    valid = f"{fixture_site.base_url}/img/2.png"
    urls = [crafted_images["bomb"], crafted_images["over"], crafted_images["at"], valid]
    outcome = _scrape(celery_app, dataset_id=dataset_id, urls=urls)
    result = outcome.get(timeout=TIMEOUT)

    # The bombs are rejected items, as any undecodable image is; the batch goes on.
    assert outcome.state == "SUCCESS"
    assert {k: result[k] for k in ("images", "new", "skipped")} == {"images": 2, "new": 2, "skipped": 2}
    manifest = read_json(data_dir / result["manifest"])
    limit = f"over the limit of {images.MAX_IMAGE_PIXELS:,} pixels per image"
    reasons = {s["url"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {crafted_images["bomb"], crafted_images["over"]}
    assert reasons[crafted_images["bomb"]].startswith("image is 30000x30000 pixels (900,000,000), " + limit)
    assert reasons[crafted_images["over"]].startswith(f"image is {OVER_LIMIT[0]}x{OVER_LIMIT[1]} pixels")
    assert limit in reasons[crafted_images["over"]]
    items = {i["url"]: i for i in manifest["items"]}
    assert (items[crafted_images["at"]]["width"], items[crafted_images["at"]]["height"]) == AT_LIMIT
    assert (items[valid]["width"], items[valid]["height"]) == (64, 64)
    assert len(list((data_dir / "scrapes" / dataset_id / "images").iterdir())) == 2  # no bomb stored

    # Received once (not retried), logged as a warning naming the size, and the child survived:
    # the same worker scrapes the next dataset.
    assert normal.log().count(f"[{outcome.id}] received") == 1
    warning = next(line for line in normal.log().splitlines()
                   if '"level": "WARNING"' in line and "30000x30000" in line)
    assert crafted_images["bomb"] in warning
    after = _scrape(celery_app, dataset_id=_dataset(), urls=[valid]).get(timeout=TIMEOUT)
    assert (after["images"], after["skipped"]) == (1, 0)
    assert normal.proc is not None and normal.proc.poll() is None
    assert "WorkerLostError" not in normal.log()
