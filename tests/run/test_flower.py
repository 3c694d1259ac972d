"""Flower, rendered and run, looked at in a real browser.

values-prod.yaml with ``flower.enabled`` and basic-auth credentials (the harness's run overrides,
training/scraping/beat switched off to spare the CPUs): the rendered worker Deployments (default,
labeling) and the rendered Flower Deployment run as containers against a loopback Redis
(``fleet_factory``), and headless Chromium (Debian's ``chromium``, ``tests/run/browser.py``) is
pointed at Flower:

- without credentials the UI answers 401 with a basic-auth challenge and shows no worker;
- with the wrong password it still answers 401;
- logged in with the chart's credentials, the workers page, once Flower's JavaScript has filled
  its table from ``/workers?json=1``, lists every running worker (``<group>@<pod name>``) as
  Online, with the task each one ran counted as succeeded;
- a screenshot of that page is kept as ``tests/run/artifacts/flower-workers.png`` (git-ignored,
  left for CI to collect; ``$RUN_TEST_ARTIFACTS`` puts it elsewhere).
"""

from __future__ import annotations

import io
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from imagineer_worker.testing.services import free_port
from PIL import Image

from tests.chart.helm import REPO
from tests.run.browser import Browser, BrowserError, chromium_binary
from tests.run.fleet import Fleet, logs, run_values

# Kept after the run (git-ignored); $RUN_TEST_ARTIFACTS moves them, e.g. to a CI upload folder.
ARTIFACTS = Path(os.environ.get("RUN_TEST_ARTIFACTS") or REPO / "tests" / "run" / "artifacts")
SCREENSHOT = ARTIFACTS / "flower-workers.png"
WORKERS = ("default", "labeling")  # the worker groups this fleet runs
USER = "sre"
FLOWER_READY_TIMEOUT = 90.0
TABLE_TIMEOUT = 60.0

# The workers table as the page's JavaScript rendered it: null until Flower's DataTable has loaded
# its rows from /workers?json=1 (the refresh indicator then says "Updated <time>").
WORKERS_TABLE_JS = """(() => {
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
  return {refreshed: status.textContent.trim(), rows: rows,
          online: document.getElementById('workers-online').textContent.trim()};
})()"""


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


@pytest.fixture
def browser() -> Iterator[Browser]:
    if chromium_binary() is None:
        pytest.fail("no chromium: `make system-packages` installs Debian's chromium", pytrace=False)
    with Browser(timeout=60) as chromium:
        yield chromium


class TestFlowerInChromium:
    def test_without_credentials_the_ui_answers_401(self, flower: Flower,
                                                    browser: Browser) -> None:
        """No credentials: a basic-auth challenge from the server, cancelled, leaves a 401 page
        that names no worker. A wrong password is challenged again and refused the same way."""
        fleet, base, password = flower.fleet, flower.url, flower.password
        page = browser.navigate(f"{base}/workers")
        assert page.status == 401, page
        assert page.headers.get("www-authenticate", "").lower().startswith("basic"), page.headers
        assert [(c.scheme, c.source, c.answer) for c in browser.challenges] == [("basic", "Server", "CancelAuth")]
        text = browser.evaluate("document.body ? document.body.innerText : ''")
        for component in WORKERS:
            assert fleet.hostname(component) not in text, text
        assert browser.evaluate("document.getElementById('workers-table') === null")

        browser.credentials = (USER, password + "-wrong")
        page = browser.navigate(f"{base}/workers")
        assert page.status == 401, page
        assert [c.answer for c in browser.challenges[1:]] == ["ProvideCredentials", "CancelAuth"]

    def test_logged_in_the_workers_page_lists_every_worker_online(self, flower: Flower,
                                                                  browser: Browser) -> None:
        """Log in with the chart's credentials: the table that Flower's JavaScript renders lists
        every running worker as Online; a task sent to each worker then shows up in its row as
        succeeded (the page refreshes itself). The page is kept as a screenshot."""
        fleet, base, password = flower.fleet, flower.url, flower.password
        browser.credentials = (USER, password)
        page = browser.navigate(f"{base}/workers")
        assert page.status == 200, page
        assert browser.challenges, "the browser was never asked for credentials"
        assert all((c.scheme, c.source, c.answer) == ("basic", "Server", "ProvideCredentials")
                   for c in browser.challenges), browser.challenges

        expected = {fleet.hostname(component) for component in WORKERS}
        last: list[Any] = [None]

        def rows_where(ok: Callable[[dict[str, Any]], bool]) -> bool:
            table = last[0] = browser.evaluate(WORKERS_TABLE_JS)
            rows = {row["hostname"]: row for row in (table or {}).get("rows", [])}
            return bool(table) and all(h in rows and ok(rows[h]) for h in expected)

        def wait_rows(ok: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
            try:
                browser.wait_for(lambda: rows_where(ok), TABLE_TIMEOUT, what)
            except BrowserError as exc:
                browser.screenshot(ARTIFACTS / "flower-workers-failure.png")
                raise AssertionError(f"{exc}; the table: {last[0]}\nflower log:\n"
                                     f"{logs(fleet.pods['flower'].name)}") from exc
            return dict(last[0])

        table = wait_rows(lambda row: row["status"] == "Online" and not row["offline"],
                          "every worker Online in Flower's table")
        assert {row["hostname"] for row in table["rows"]} == expected, table  # and no stray worker
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
        table = wait_rows(lambda row: row["status"] == "Online" and row["succeeded"].replace(",", "").isdigit()
                          and int(row["succeeded"].replace(",", "")) >= 1,
                          "each worker's task counted as succeeded")
        assert table["refreshed"].startswith("Updated"), table
        assert browser.console == [], browser.console  # Flower's scripts ran without errors

        shot = browser.screenshot(SCREENSHOT)
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
        assert len(data) > 10_000, len(data)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            assert image.format == "PNG" and image.size == (browser.width, browser.height), image
            colors = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
        assert len(colors) > 50, f"{len(colors)} colours: a blank page?"

