"""Flower, rendered and run, looked at in a real browser.

values-prod.yaml with ``flower.enabled`` and basic-auth credentials (the harness's run overrides,
training/scraping/beat switched off to spare the CPUs): the rendered worker Deployments (default,
labeling) and the rendered Flower Deployment run as containers against a loopback Redis
(``fleet_factory``), and headless Chromium (Debian's ``chromium``, driven by Playwright for Python
through ``executable_path``: no browser download) is pointed at Flower:

- without credentials the UI answers 401 with a basic-auth challenge, and the browser, which has
  none to give, shows no worker;
- with the wrong password it answers 401 and shows no worker either;
- logged in with the chart's credentials, the workers page, once Flower's JavaScript has filled
  its table from ``/workers?json=1``, lists every running worker (``<group>@<pod name>``) as
  Online, with the task each one ran counted as succeeded, and Flower's scripts log no error;
- a screenshot of that page is kept as ``tests/run/artifacts/flower-workers.png`` (git-ignored,
  left for CI to collect; ``$RUN_TEST_ARTIFACTS`` puts it elsewhere).
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from imagineer_worker.testing.services import free_port
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.chart.helm import REPO
from tests.run.fleet import Fleet, logs, run_values

# Kept after the run (git-ignored); $RUN_TEST_ARTIFACTS moves them, e.g. to a CI upload folder.
ARTIFACTS = Path(os.environ.get("RUN_TEST_ARTIFACTS") or REPO / "tests" / "run" / "artifacts")
SCREENSHOT = ARTIFACTS / "flower-workers.png"
WORKERS = ("default", "labeling")  # the worker groups this fleet runs
USER = "sre"
FLOWER_READY_TIMEOUT = 90.0
TABLE_TIMEOUT = 60.0
VIEWPORT = {"width": 1280, "height": 900}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")

# The workers table as the page's JavaScript rendered it, once every host in `hosts` is Online
# with at least `succeeded` tasks succeeded; null until then (and until Flower's DataTable has
# loaded its rows from /workers?json=1: the refresh indicator then says "Updated <time>").
WORKERS_TABLE_JS = """([hosts, succeeded]) => {
  const status = document.getElementById('workers-refresh-status');
  if (!status || !status.textContent.trim().startsWith('Updated')) return null;
  const rows = Array.from(document.querySelectorAll('#workers-table tbody tr')).map(tr => {
    const link = tr.querySelector('a.worker-name-link');
    return {hostname: link ? link.getAttribute('title') : tr.cells[0].textContent.trim(),
            href: link ? link.getAttribute('href') : null,
            status: tr.cells[1] ? tr.cells[1].textContent.trim() : '',
            succeeded: tr.cells[5] ? tr.cells[5].textContent.trim() : '',
            offline: tr.classList.contains('worker-offline')};
  });
  const ready = hosts.every(h => rows.some(row => row.hostname === h && row.status === 'Online'
      && !row.offline && parseInt(row.succeeded.replace(/,/g, ''), 10) >= succeeded));
  return ready ? {refreshed: status.textContent.trim(), rows: rows,
                  online: document.getElementById('workers-online').textContent.trim()} : null;
}"""
# What a page shows a person: its text, and whether Flower's workers table is there at all.
PAGE_JS = "() => [document.body ? document.body.innerText : '', !!document.getElementById('workers-table')]"
# Chromium's own page for a navigation that failed (here: a challenge it has no credentials for).
ERROR_PAGE_JS = "() => location.protocol === 'chrome-error:' && document.readyState === 'complete'"


def chromium_binary() -> str | None:
    """``$CHROMIUM`` or the first Chromium on PATH (Debian's package installs ``/usr/bin/chromium``)."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def flower_deployment(fleet: Fleet) -> dict[str, Any]:
    return next(obj for obj in fleet.objects if obj["kind"] == "Deployment"
                and obj["metadata"]["labels"].get("app.kubernetes.io/component") == "flower")


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


class Flower(NamedTuple):
    fleet: Fleet
    url: str  # http://127.0.0.1:<flower.port>
    password: str


@pytest.fixture(scope="class")
def flower(fleet_factory: Callable[..., Fleet]) -> Flower:
    """The fleet with Flower: the workers' startup probes and Flower's readiness probe passing."""
    password = secrets.token_urlsafe(18)
    port = free_port()  # --network host: a free port rather than 5555, whatever else runs here
    values = run_values(broker={"existingSecret": "", "caSecret": ""},
                        workers={"training": {"enabled": False}, "scraping": {"enabled": False}},
                        beat={"enabled": False},
                        flower={"enabled": True, "port": port,
                                "basicAuth": {"username": USER, "password": password}})
    fleet = fleet_factory("prod", values)
    assert {*WORKERS, "flower"} <= set(fleet.pods), sorted(fleet.pods)
    assert not {"training", "scraping", "beat"} & set(fleet.pods), sorted(fleet.pods)
    deployment = flower_deployment(fleet)
    assert deployment["metadata"]["name"].endswith("-flower")
    # The credentials reach the pod from a Secret, never inline in the Deployment.
    assert password not in yaml.safe_dump(deployment)

    for component in WORKERS:
        fleet.wait_ready(component)
    probes = fleet.pods["flower"].http_probes
    assert set(probes) >= {"readiness", "liveness"}, probes  # httpGet, GET from the host as the kubelet would
    assert probes["readiness"].port == port, probes
    fleet.wait_ready("flower", timeout=FLOWER_READY_TIMEOUT)  # its readiness probe, no credentials
    ok, detail = fleet.probe("flower", "liveness")  # the kubelet has no credentials either
    assert ok, detail
    assert get(f"http://127.0.0.1:{port}/workers")[0] == 401  # while the UI asks for them
    return Flower(fleet, f"http://127.0.0.1:{port}", password)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    binary = chromium_binary()
    if binary is None:
        pytest.fail("no chromium: `make system-packages` installs Debian's chromium", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, headless=True)
        yield browser
        browser.close()


class Tab(NamedTuple):
    page: Page
    errors: list[str]  # console errors and uncaught exceptions of the page's scripts


@pytest.fixture
def open_tab(chromium: Browser) -> Iterator[Callable[[tuple[str, str] | None], Tab]]:
    """A fresh browser context (no cookies, no cached credentials) per call, with the basic-auth
    credentials the browser answers a challenge with, or none."""
    contexts = []

    def open_tab(credentials: tuple[str, str] | None) -> Tab:
        context = chromium.new_context(
            viewport=VIEWPORT,
            http_credentials={"username": credentials[0], "password": credentials[1]} if credentials else None)
        contexts.append(context)
        tab = Tab(context.new_page(), [])
        tab.page.on("console", lambda msg: msg.type == "error" and tab.errors.append(f"console.error: {msg.text}"))
        tab.page.on("pageerror", lambda exc: tab.errors.append(f"exception: {exc}"))
        return tab

    yield open_tab
    for context in contexts:
        context.close()


class TestFlowerInChromium:
    def test_without_credentials_the_ui_answers_401(self, flower: Flower,
                                                    open_tab: Callable[[tuple[str, str] | None], Tab]) -> None:
        """No credentials: Flower answers with a basic-auth challenge, and headless Chromium, with
        none to give, shows nothing of it (the navigation fails on the challenge). A wrong password
        is refused with a 401 page that names no worker."""
        fleet, url, password = flower.fleet, f"{flower.url}/workers", flower.password
        page = open_tab(None).page
        answer = page.request.get(url)  # the same request from the browser's context, no credentials
        assert answer.status == 401, answer
        assert answer.headers.get("www-authenticate", "").lower().startswith("basic"), answer.headers
        with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
            page.goto(url)
        # goto fails before Chromium has committed its error page: look at the page once it has.
        page.wait_for_function(ERROR_PAGE_JS)
        text, has_table = page.evaluate(PAGE_JS)
        assert not has_table and not any(fleet.hostname(c) in text for c in WORKERS), text

        page = open_tab((USER, password + "-wrong")).page
        response = page.goto(url)
        assert response is not None and response.status == 401, response
        assert response.headers.get("www-authenticate", "").lower().startswith("basic"), response.headers
        text, has_table = page.evaluate(PAGE_JS)
        assert not has_table and not any(fleet.hostname(c) in text for c in WORKERS), text

    def test_logged_in_the_workers_page_lists_every_worker_online(
            self, flower: Flower, open_tab: Callable[[tuple[str, str] | None], Tab]) -> None:
        """Log in with the chart's credentials: the table that Flower's JavaScript renders lists
        every running worker as Online; a task sent to each worker then shows up in its row as
        succeeded (the page refreshes itself). The page is kept as a screenshot."""
        fleet, password = flower.fleet, flower.password
        tab = open_tab((USER, password))
        response = tab.page.goto(f"{flower.url}/workers")
        assert response is not None and response.status == 200, response
        expected = sorted(fleet.hostname(component) for component in WORKERS)

        def wait_table(succeeded: int, what: str) -> dict[str, Any]:
            try:
                handle = tab.page.wait_for_function(WORKERS_TABLE_JS, arg=[expected, succeeded],
                                                    timeout=TABLE_TIMEOUT * 1000)
            except PlaywrightError as exc:
                tab.page.screenshot(path=ARTIFACTS / "flower-workers-failure.png")
                raise AssertionError(f"{what}: {exc}; the page: {tab.page.evaluate(PAGE_JS)[0]}\n"
                                     f"flower log:\n{logs(fleet.pods['flower'].name)}") from exc
            table = handle.json_value()
            assert isinstance(table, dict), table
            return table

        table = wait_table(0, "every worker Online in Flower's table")
        assert sorted(row["hostname"] for row in table["rows"]) == expected, table  # and no stray worker
        for row in table["rows"]:
            assert row["href"].endswith("/worker/" + row["hostname"].replace("@", "%40")), row
        assert table["online"] == str(len(expected)), table

        app = fleet.app()
        for component in WORKERS:
            # Celery's built-in `celery.accumulate`: every worker has it, whatever its queues (a
            # worker imports only the task modules routed to its own queues)
            result = app.send_task("celery.accumulate", args=[component], queue=component)
            assert result.get(timeout=60) == [component]
            assert result.worker == fleet.hostname(component)
        table = wait_table(1, "each worker's task counted as succeeded")
        assert table["refreshed"].startswith("Updated"), table
        assert tab.errors == [], tab.errors  # Flower's scripts ran without errors

        data = tab.page.screenshot(path=SCREENSHOT)  # Playwright creates the folder
        assert SCREENSHOT.read_bytes() == data
        assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
        assert len(data) > 10_000, len(data)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            assert image.format == "PNG" and image.size == (VIEWPORT["width"], VIEWPORT["height"]), image
            colors = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
        assert len(colors) > 50, f"{len(colors)} colours: a blank page?"
