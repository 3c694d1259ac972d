"""The scraping queue: collect a dataset of images from a page or a list of URLs.

Every request goes through :mod:`imagineer_worker.netguard` (SSRF checks, size and time limits,
the per-domain rate limit shared through Redis). Files are named by content hash, so a re-run or
a redelivered task (late acks) never duplicates an image: the manifest is merged, not replaced.
One bad image is recorded in ``skipped`` (an image over the pixel limit of
:mod:`imagineer_worker.images` too, refused from its header before anything decodes it); only a
bad payload or an unusable page fails the task.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urljoin

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import Field, StringConstraints, field_validator, model_validator

from imagineer_worker import images
from imagineer_worker.config import get_settings
from imagineer_worker.netguard import FetchError, FetchPolicy, FetchRefused, fetch
from imagineer_worker.storage import atomic_write_bytes, atomic_write_json, read_json, safe_id
from imagineer_worker.tasks import names
from imagineer_worker.tasks.base import ImagineerTask, InvalidPayload, Payload, validate

log = logging.getLogger(__name__)

TASK_NAME = names.SCRAPE_DATASET
MAX_URLS = 10_000
MAX_URL_LENGTH = 8192
# Pillow plugins we let near untrusted bytes, and their file extensions: shared with labeling.
FORMATS = images.FORMATS
HTML_TYPES = ("text/html", "application/xhtml+xml")
LOCK_SECONDS = 60


class ScrapeError(Exception):
    """The dataset cannot be scraped (page unreachable or not HTML). Not retried automatically."""


class ScrapeRefused(InvalidPayload):
    """``page_url`` is refused by the network policy: bad input, identical on every delivery."""


class ScrapePayload(Payload):
    dataset_id: str
    urls: list[Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL_LENGTH)]] | None = Field(
        default=None, min_length=1, max_length=MAX_URLS)
    page_url: Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL_LENGTH)] | None = None
    max_images: int = Field(default=1000, ge=1, le=10_000)

    @field_validator("dataset_id")
    @classmethod
    def _safe_dataset_id(cls, value: str) -> str:
        return safe_id(value, "dataset_id")

    @model_validator(mode="after")
    def _one_source(self) -> ScrapePayload:
        if (self.urls is None) == (self.page_url is None):
            given = "both" if self.urls is not None else "neither"
            raise ValueError(f"give exactly one of 'urls' and 'page_url' (got {given})")
        return self


# --- page parsing ---------------------------------------------------------------------------------


class _ImageTags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.base: str | None = None
        self.images: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "base" and self.base is None and values.get("href"):
            self.base = values["href"]
        elif tag == "img" and (values.get("src") or "").strip():
            alt = values.get("alt")
            self.images.append((str(values["src"]).strip(), alt.strip() if alt is not None else None))


def image_links(html: str, page_url: str) -> list[tuple[str, str | None]]:
    """``(absolute url, alt or None)`` for each ``<img src>`` in document order.

    Relative sources resolve against ``<base href>`` when the page has one, else the page URL
    (after redirects).
    """
    parser = _ImageTags()
    parser.feed(html)
    parser.close()
    base = urljoin(page_url, parser.base) if parser.base else page_url
    return [(urljoin(base, src).split("#", 1)[0], alt) for src, alt in parser.images]


# --- images and manifest --------------------------------------------------------------------------


def inspect_image(body: bytes) -> tuple[str, int, int]:
    """``(extension, width, height)`` of an allowed, decodable raster image; ``ValueError`` otherwise.

    :func:`imagineer_worker.images.inspect_image` does the work, so scraping and labeling accept
    exactly the same images: the allow-listed formats, and at most ``images.MAX_IMAGE_PIXELS``
    pixels, checked from the header before ``verify()`` or anything downstream decodes it
    (``images.ImageTooLarge``, a ``ValueError``, names the size and the limit).
    """
    info = images.inspect_image(body)
    return info.extension, info.width, info.height


def _existing_manifest(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError):
        log.warning("ignoring unreadable manifest %s", path, extra={"operation": "scrape"})
        return None
    return data if isinstance(data, dict) and isinstance(data.get("items"), list) else None


def _items_by_sha(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    items = manifest.get("items", [])
    return {i["sha256"]: i for i in items if isinstance(i, dict) and isinstance(i.get("sha256"), str)}


class _Scrape:
    """The state of one run: items keyed by sha256, this run's duplicates and skips."""

    def __init__(self, task: ImagineerTask, payload: ScrapePayload, policy: FetchPolicy) -> None:
        self.task = task
        self.payload = payload
        self.policy = policy
        self.dir = task.data.scrape_dir(payload.dataset_id)
        self.root = task.data.root.resolve()
        self.manifest_path = self.dir / "manifest.json"
        previous = _existing_manifest(self.manifest_path) or {}
        self.created_at: str = previous.get("created_at") or _now()
        self.items = _items_by_sha(previous)
        self.outcomes: dict[str, str] = {}  # url -> "sha:<hex>" or the skip reason, this run
        self.seen_hashes: set[str] = set()
        self.duplicates = 0
        self.new_files = 0
        self.skipped: list[dict[str, str]] = []

    def skip(self, url: str, reason: str, *, level: int = logging.INFO) -> None:
        self.outcomes.setdefault(url, reason)
        self.skipped.append({"url": url, "reason": reason})
        log.log(level, "skipped %s: %s", url, reason,
                extra={"operation": "scrape", "dataset_id": self.payload.dataset_id, "url": url,
                       "reason": reason})

    def add(self, url: str, alt: str | None) -> None:
        """Fetch one candidate and record it as an item, a duplicate or a skip."""
        earlier = self.outcomes.get(url)
        if earlier is not None:  # listed twice: count it like a refetch, without the request
            if earlier.startswith("sha:"):
                self.duplicates += 1
                return None
            return self.skip(url, earlier)
        try:
            response = fetch(url, policy=self.policy, accept="image/*")
        except FetchRefused as exc:
            return self.skip(url, str(exc))
        except FetchError as exc:
            return self.skip(url, f"fetch failed: {exc}")
        if not response.ok:
            return self.skip(url, f"HTTP {response.status}")
        if not response.content_type.startswith("image/"):
            return self.skip(url, f"content type {response.content_type or 'missing'!r} is not image/*")
        try:
            ext, width, height = inspect_image(response.body)
        except images.ImageTooLarge as exc:  # a likely decompression bomb: worth a warning
            return self.skip(url, str(exc), level=logging.WARNING)
        except ValueError as exc:
            return self.skip(url, str(exc))
        sha = hashlib.sha256(response.body).hexdigest()
        self.outcomes[url] = f"sha:{sha}"
        if sha in self.seen_hashes:
            self.duplicates += 1
            return None
        self.seen_hashes.add(sha)
        if sha in self.items:  # kept from an earlier run: same content, first record wins
            return None
        relative = f"images/{sha}.{ext}"
        target = self.dir / relative
        if not target.exists():
            atomic_write_bytes(target, response.body)
            self.new_files += 1
        self.items[sha] = {
            "file": relative,
            "path": target.relative_to(self.root).as_posix(),
            "sha256": sha,
            "url": response.url,
            "content_type": response.content_type,
            "bytes": len(response.body),
            "width": width,
            "height": height,
            "alt": alt or None,
        }
        return None

    def save(self, *, complete: bool) -> None:
        """Merge with the manifest on disk under a Redis lock (two runs of one dataset may overlap)."""
        source: dict[str, Any] = ({"page_url": self.payload.page_url} if self.payload.page_url
                                  else {"urls": self.payload.urls})
        lock = self.task.app.backend.client.lock(
            get_settings().key(f"imagineer:lock:scrape:{self.payload.dataset_id}"), timeout=LOCK_SECONDS,
            blocking_timeout=LOCK_SECONDS)
        with lock:
            on_disk = _existing_manifest(self.manifest_path) or {}
            merged = _items_by_sha(on_disk)
            for sha, item in self.items.items():
                merged.setdefault(sha, item)
            self.items = merged
            atomic_write_json(self.manifest_path, {
                "dataset_id": self.payload.dataset_id,
                "created_at": on_disk.get("created_at") or self.created_at,
                "updated_at": _now(),
                "complete": complete,
                "source": source,
                "items": list(merged.values()),
                "skipped": self.skipped,
            })


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _page_images(url: str, policy: FetchPolicy) -> list[tuple[str, str | None]]:
    """The page's image links; a refused or unusable page fails the task with the reason."""
    try:
        page = fetch(url, policy=policy, accept="text/html,application/xhtml+xml")
    except FetchRefused as exc:
        raise ScrapeRefused(f"page_url {exc}") from None
    except FetchError as exc:
        raise ScrapeError(f"page_url could not be fetched: {exc}") from None
    if not page.ok:
        raise ScrapeError(f"page_url {page.url} answered HTTP {page.status}")
    if page.content_type not in HTML_TYPES:
        raise ScrapeError(f"page_url {page.url} is {page.content_type or 'untyped'}, not HTML")
    try:
        html = page.body.decode(page.charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name in the header
        html = page.body.decode("utf-8", errors="replace")
    return image_links(html, page.url)


def _progress(task: ImagineerTask, done: int, total: int) -> None:
    if task.request.id is not None:
        task.update_state(state="PROGRESS", meta={"done": done, "total": total})


@shared_task(name=TASK_NAME, base=ImagineerTask, bind=True,
             throws=(*ImagineerTask.throws, ScrapeError))
def scrape_dataset(self: ImagineerTask, **payload: Any) -> dict[str, Any]:
    """Scrape ``page_url``'s ``<img>`` tags (with alt text) or ``urls`` into ``scrapes/<dataset_id>``.

    Returns ``{"dataset_id", "manifest", "images", "new", "duplicates", "skipped"}``: ``images``
    counts the manifest's items (earlier runs included), the others count this run.
    """
    p = validate(ScrapePayload, payload)
    policy = FetchPolicy.from_settings(get_settings(), redis_client=self.app.backend.client)
    extra = {"operation": "scrape", "dataset_id": p.dataset_id}
    candidates: Iterable[tuple[str, str | None]]
    candidates = _page_images(p.page_url, policy) if p.page_url else [(u, None) for u in p.urls or []]
    candidates = list(candidates)[:MAX_URLS]
    run = _Scrape(self, p, policy)
    log.info("scraping %d candidate images for %s", len(candidates), p.dataset_id,
             extra={**extra, "source": p.page_url or "urls", "candidates": len(candidates)})
    total = len(candidates)
    _progress(self, 0, total)
    try:
        for done, (url, alt) in enumerate(candidates, start=1):
            if len(run.seen_hashes) >= p.max_images:
                log.info("stopping at max_images=%d", p.max_images, extra=extra)
                break
            run.add(url, alt)
            _progress(self, done, total)
    except SoftTimeLimitExceeded:
        run.save(complete=False)  # keep what was fetched: a re-run continues from it
        log.warning("soft time limit: saved a partial manifest for %s", p.dataset_id, extra=extra)
        raise
    run.save(complete=True)
    result = {
        "dataset_id": p.dataset_id,
        "manifest": run.manifest_path.relative_to(run.root).as_posix(),
        "images": len(run.items),
        "new": run.new_files,
        "duplicates": run.duplicates,
        "skipped": len(run.skipped),
    }
    log.info("scraped %s: %d images (%d new), %d duplicates, %d skipped", p.dataset_id, result["images"],
             result["new"], result["duplicates"], result["skipped"], extra={**extra, **result})
    return result
