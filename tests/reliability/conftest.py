"""Fixtures of the fault-injection suite and the one table it prints.

- ``ledger``: a ``redis-server`` of its own for the whole session, where ``ledger_tasks`` records
  every execution (never the broker: the broker is what the faults restart and stop).
- ``scenario``: runs a scenario's trials (concurrently where they only wait), each on a fresh
  :class:`~tests.reliability.harness.System` (its own broker and workers), records them in the
  table, copies the logs of a failed trial to ``tests/reliability/artifacts/`` and fails the test
  unless every trial kept every task: none lost, none completed twice, no two executions of one
  task at once, and each scenario's own expectations met.

``RELIABILITY_TRIALS`` (default 5) and ``RELIABILITY_BURST`` (default 10000) size the run;
``make reliability-ci`` (part of ``make test``) uses 2 trials and a 2,000-task burst.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from imagineer_worker.testing.services import RedisServer

from tests.reliability import harness
from tests.reliability.harness import RESULTS, System, Trial, record, row, run_trials, trials

ARTIFACTS = Path(__file__).parent / "artifacts"
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="imagineer-reliability-"))
_STARTED = time.monotonic()


@pytest.fixture(scope="session")
def ledger_server() -> Iterator[RedisServer]:
    server = RedisServer(_SESSION_DIR / "ledger").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ledger(ledger_server: RedisServer) -> redis.Redis:
    return ledger_server.client()


class Scenario:
    """One row of the table: its trials, each on a fresh system."""

    def __init__(self, name: str, ledger_url: str, workdir: Path) -> None:
        self.name = name
        self.ledger_url = ledger_url
        self.workdir = workdir
        self.systems: list[System] = []

    def system(self, trial: int, **kwargs: object) -> System:
        s = System(self.workdir / f"trial-{trial}", self.ledger_url, **kwargs)  # type: ignore[arg-type]
        self.systems.append(s)
        return s

    def run(self, trial: Callable[[int], Trial], *, n: int | None = None, parallel: bool | int = True) -> list[Trial]:
        """Run the trials, record them in the table, and fail with every problem found."""
        outcomes = run_trials(n or trials(), trial, parallel=parallel)
        done: list[Trial] = []
        for i, outcome in enumerate(outcomes):
            t = outcome if isinstance(outcome, Trial) else Trial(
                problems=[f"trial crashed: {outcome.__class__.__name__}: {outcome}"],
                workdir=self.workdir / f"trial-{i}")
            record(self.name, t)
            done.append(t)
        failures = []
        for i, t in enumerate(done):
            bad = list(t.problems)
            if t.lost:
                bad.append(f"{t.lost} task(s) lost")
            if t.parallel:
                bad.append(f"{t.parallel} task(s) ran twice at the same time")
            if t.extra_completions:
                bad.append(f"{t.extra_completions} extra completion(s) (a task ran to the end more than once)")
            if bad:
                failures.append(f"trial {i}: " + "; ".join(bad))
                self._keep_logs(i, t)
        if failures:
            row(self.name).failed = failures[0][:300]
            pytest.fail(f"{self.name}:\n  " + "\n  ".join(failures + [n for t in done for n in t.notes][:10]),
                        pytrace=False)
        return done

    def _keep_logs(self, i: int, t: Trial) -> None:
        if t.workdir is None:
            return
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        target = ARTIFACTS / slug / f"trial-{i}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True, exist_ok=True)
        for log in [*t.workdir.glob("logs/*.log"), *t.workdir.glob("redis/*.log")]:
            shutil.copy(log, target / f"{log.parent.name}-{log.name}")
        (target / "problems.txt").write_text("\n".join(t.problems + t.notes) + "\n")

    def stop(self) -> None:
        for s in self.systems:
            s.stop()


@pytest.fixture
def scenario(request: pytest.FixtureRequest, ledger_server: RedisServer) -> Iterator[Callable[[str], Scenario]]:
    made: list[Scenario] = []

    def make(name: str) -> Scenario:
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        s = Scenario(name, ledger_server.url, _SESSION_DIR / slug)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    minutes = (time.monotonic() - _STARTED) / 60
    title = (f"reliability: {harness.trials()} trial(s) per scenario, burst of {harness.burst_size()}, "
             f"{minutes:.1f} min")
    text = harness.table()
    notes = [f"- {r.scenario}: {n}" for r in RESULTS.values() for n in r.notes][:40]
    terminalreporter.write_sep("=", title)
    for line in text.splitlines():
        terminalreporter.write_line(line)
    if notes:
        terminalreporter.write_line("")
        for line in notes:
            terminalreporter.write_line(line)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "results.md").write_text(f"# {title}\n\n{text}\n" + ("\n" + "\n".join(notes) + "\n" if notes else ""))
    shown = ARTIFACTS.relative_to(Path.cwd()) if ARTIFACTS.is_relative_to(Path.cwd()) else ARTIFACTS
    terminalreporter.write_line(f"(also in {shown}/results.md)")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)
