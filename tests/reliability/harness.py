"""The fault-injection harness: real Redis servers, real worker processes, the ledger, the table.

A *trial* is one independent system — its own broker ``redis-server``, its own worker processes —
put under one fault. Trials whose time goes into waiting (redelivery after a visibility timeout, a
30 s outage) run concurrently, each with its own broker; the ledger Redis is shared (task ids are
unique). Each trial returns a :class:`Trial`; :data:`RESULTS` sums them per scenario and
``conftest.pytest_terminal_summary`` prints the one table.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml
from celery import Celery
from imagineer_worker.celery_app import create_app
from imagineer_worker.config import load_settings
from imagineer_worker.testing.services import CeleryProcess, RedisServer, wait_for

REPO = Path(__file__).resolve().parents[2]
TASK = "reliability.work"
INCLUDE = "--include=tests.reliability.ledger_tasks"
QUEUES = ("default", "training", "scraping", "labeling")

# Test-sized limits (config requires soft < hard < visibility).
SOFT_LIMIT, HARD_LIMIT, VISIBILITY = 8, 10, 15
CHART = REPO / "charts" / "imagineer-workers"
# kombu's restore sweep in a worker runs every unacked_restore_interval (10 s) x
# unacked_restore_throttle (10) = 100 s: a task whose whole worker died is redelivered within
# visibility timeout + 100 s (+ start-up), not within the visibility timeout alone.
RESTORE_SWEEP = 100
REDELIVERY_BOUND = VISIBILITY + RESTORE_SWEEP + 60
# Results must outlive a redelivery, as in production (1 day > 1 h + 100 s): a task whose worker
# died between storing SUCCESS and the ack is recognised on redelivery only while its result
# exists (worker_deduplicate_successful_tasks).
RESULT_EXPIRES = VISIBILITY + RESTORE_SWEEP + 35


def helm() -> str:
    """The chart toolchain's helm: ``$HELM`` (the Makefile passes it) or ``.tools/bin/helm``.

    ``make reliability`` depends on ``tools``, so it is always there; a missing one is an error.
    """
    path = os.environ.get("HELM") or str(REPO / ".tools" / "bin" / "helm")
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        raise FileNotFoundError(f"helm not found at {path}: run make tools (make reliability does)")
    return path


def chart_grace_period() -> tuple[int, str]:
    """The workers' ``terminationGracePeriodSeconds`` as the chart derives it for the test-sized limits.

    Rendered by ``helm template``: the same rule the Deployments get.
    """
    limits = {"softTimeLimitSeconds": SOFT_LIMIT, "hardTimeLimitSeconds": HARD_LIMIT,
              "visibilityTimeoutSeconds": VISIBILITY}
    out = subprocess.run(
        [helm(), "template", "release", str(CHART), "--show-only", "templates/worker/deployment.yaml",
         "--set", ",".join(f"celery.{k}={v}" for k, v in limits.items())],
        capture_output=True, text=True, timeout=120, check=True).stdout
    periods = {d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
               for d in yaml.safe_load_all(out) if d and d.get("kind") == "Deployment"}
    assert len(periods) == 1, f"the worker groups render different grace periods: {periods}"
    return int(periods.pop()), "rendered by helm template"


def trials() -> int:
    return max(1, int(os.environ.get("RELIABILITY_TRIALS", "5")))


def burst_size() -> int:
    return int(os.environ.get("RELIABILITY_BURST", "10000"))


# --- results -----------------------------------------------------------------------------------


@dataclass
class Trial:
    sent: int = 0
    completed: int = 0
    dead_lettered: int = 0
    lost: int = 0
    parallel: int = 0
    extra_completions: int = 0  # a task ran to the end again after its completion had been recorded
    reruns: int = 0  # a body ran to the end, its worker was killed -9 before recording it, so it ran again
    recovery_s: float | None = None
    notes: list[str] = field(default_factory=list)  # diagnosis, printed under the table
    problems: list[str] = field(default_factory=list)  # failed expectations of the scenario
    workdir: Path | None = None  # the trial's logs, copied to the artifacts when it failed

    def merge(self, counts: Trial) -> None:
        self.sent += counts.sent
        self.completed += counts.completed
        self.dead_lettered += counts.dead_lettered
        self.lost += counts.lost
        self.parallel += counts.parallel
        self.extra_completions += counts.extra_completions
        self.reruns += counts.reruns

    def check(self, ok: bool, problem: str) -> bool:
        if not ok:
            self.problems.append(problem)
        return ok


@dataclass
class Row:
    scenario: str
    trials: int = 0
    sent: int = 0
    completed: int = 0
    dead_lettered: int = 0
    lost: int = 0
    parallel: int = 0
    extra_completions: int = 0
    reruns: int = 0
    recovery_s: float | None = None
    notes: list[str] = field(default_factory=list)
    failed: str = ""

    def add(self, t: Trial) -> None:
        self.trials += 1
        self.sent += t.sent
        self.completed += t.completed
        self.dead_lettered += t.dead_lettered
        self.lost += t.lost
        self.parallel += t.parallel
        self.extra_completions += t.extra_completions
        self.reruns += t.reruns
        if t.recovery_s is not None:
            self.recovery_s = max(self.recovery_s or 0.0, t.recovery_s)
        self.notes.extend(t.notes)


RESULTS: dict[str, Row] = {}
_results_lock = threading.Lock()


def row(scenario: str) -> Row:
    with _results_lock:
        return RESULTS.setdefault(scenario, Row(scenario))


def record(scenario: str, trial: Trial) -> Trial:
    with _results_lock:
        RESULTS.setdefault(scenario, Row(scenario)).add(trial)
    return trial


HEADER = ("scenario", "trials", "sent", "completed", "dead-lettered", "lost", "parallel duplicates",
          "max recovery s")


def table() -> str:
    rows = []
    for r in RESULTS.values():
        recovery = "-" if r.recovery_s is None else f"{r.recovery_s:.1f}"
        rows.append((r.scenario, str(r.trials), str(r.sent), str(r.completed), str(r.dead_lettered),
                     str(r.lost), str(r.parallel), recovery))
    widths = [max(len(h), *(len(x[i]) for x in rows)) if rows else len(h) for i, h in enumerate(HEADER)]

    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(HEADER), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(x) for x in rows]
    extra = [f"- {r.scenario}: {r.extra_completions} task(s) ran to the end again after their completion was "
             "recorded" for r in RESULTS.values() if r.extra_completions]
    extra += [f"- {r.scenario}: {r.reruns} task body(ies) ran to the end twice: kill -9 landed after the body "
              "ended and before its result was stored (at-least-once: tasks must be idempotent)"
              for r in RESULTS.values() if r.reruns]
    failed = [f"- {r.scenario}: FAILED: {r.failed}" for r in RESULTS.values() if r.failed]
    return "\n".join(out + (["", *extra] if extra else []) + (["", *failed] if failed else []))


# --- the ledger ------------------------------------------------------------------------------


@dataclass
class Execution:
    start: float
    last: float  # end, or the last heartbeat of an execution that never finished
    finished: bool
    host: str
    pid: int


def executions(ledger: redis.Redis, task_ids: list[str]) -> dict[str, list[Execution]]:
    out: dict[str, list[Execution]] = {}
    for i in range(0, len(task_ids), 1000):
        chunk = task_ids[i:i + 1000]
        pipe = ledger.pipeline(transaction=False)
        for tid in chunk:
            pipe.hgetall(f"exec:{tid}")
        for tid, fields in zip(chunk, pipe.execute(), strict=True):
            by_exec: dict[str, dict[str, str]] = {}
            for k, v in fields.items():
                ex, _, name = k.decode().rpartition(":")
                by_exec.setdefault(ex, {})[name] = v.decode()
            runs = []
            for f in by_exec.values():
                end = f.get("end")
                runs.append(Execution(float(f["start"]), float(end or f.get("beat", f["start"])), end is not None,
                                      f.get("host", ""), int(f.get("pid", 0))))
            out[tid] = sorted(runs, key=lambda e: e.start)
    return out


def overlapping(runs: list[Execution]) -> bool:
    """Two executions of one task id at the same time (a killed one ends at its last heartbeat)."""
    return any(b.start < a.last for i, a in enumerate(runs) for b in runs[i + 1:])


def tally(ledger: redis.Redis, task_ids: list[str], dead: set[str] = frozenset()) -> Trial:  # type: ignore[assignment]
    """Counts for the sent ``task_ids``; ``dead``: the ids found dead-lettered."""
    t = Trial(sent=len(task_ids))
    for tid, runs in executions(ledger, task_ids).items():
        done = sum(r.finished for r in runs)
        if tid in dead:
            t.dead_lettered += 1
        elif done:
            t.completed += 1
        else:
            t.lost += 1
        t.extra_completions += max(0, done - 1) + (done if tid in dead else 0)
        t.parallel += overlapping(runs)
    return t


def finished_ids(ledger: redis.Redis, task_ids: list[str]) -> set[str]:
    return {tid for tid, runs in executions(ledger, task_ids).items() if any(r.finished for r in runs)}


def first_finish_after(ledger: redis.Redis, task_ids: list[str], after: float) -> float | None:
    ends = [r.last for runs in executions(ledger, task_ids).values() for r in runs if r.finished and r.last >= after]
    return min(ends) if ends else None


def wait_finished(ledger: redis.Redis, task_ids: list[str], timeout: float, what: str = "", *,
                  also: Callable[[], set[str]] | None = None, tick: Callable[[], None] | None = None) -> None:
    """Until every task finished at least once (or is in ``also()``, e.g. dead-lettered).

    ``tick`` runs on every poll (e.g. a supervisor restarting a crashed worker, as Kubernetes would).
    """
    left = set(task_ids)

    def done() -> bool:
        if tick is not None:
            tick()
        left.difference_update(finished_ids(ledger, list(left)))
        if left and also is not None:
            left.difference_update(also())
        return not left
    wait_for(done, timeout, what or f"{len(task_ids)} tasks to finish", interval=0.5)


def running_execution(ledger: redis.Redis, task_id: str) -> Execution | None:
    runs = executions(ledger, [task_id])[task_id]
    live = [r for r in runs if not r.finished]
    return live[-1] if live else None


# --- a system under test -----------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def worker_children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


class System:
    """One broker ``redis-server`` (optionally with AOF) and the workers of one trial."""

    def __init__(self, workdir: Path, ledger_url: str, *, aof: bool = False, env: dict[str, str] | None = None,
                 redis_args: list[str] | None = None) -> None:
        self.workdir = workdir
        self.ledger_url = ledger_url
        self.redis_args = (["--appendonly", "yes", "--appendfsync", "everysec"] if aof else []) + (redis_args or [])
        self.broker = RedisServer(workdir / "redis", extra_args=list(self.redis_args)).start()
        self.extra_env = dict(env or {})
        self.workers: list[CeleryProcess] = []
        self.sent: list[str] = []
        self.queue_of: dict[str, str] = {}
        self._app: Celery | None = None

    # environment shared by the workers and the client
    def env(self, **extra: str) -> dict[str, str]:
        pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        return {
            "CELERY_BROKER_URL": self.broker.url,
            "CELERY_RESULT_BACKEND": self.broker.url,
            "IMAGINEER_TASK_SOFT_TIME_LIMIT": str(SOFT_LIMIT),
            "IMAGINEER_TASK_TIME_LIMIT": str(HARD_LIMIT),
            "IMAGINEER_VISIBILITY_TIMEOUT": str(VISIBILITY),
            "CELERY_RESULT_EXPIRES": str(RESULT_EXPIRES),
            "IMAGINEER_DATA_DIR": str(self.workdir / "data"),
            "IMAGINEER_LOG_FORMAT": "json",
            "RELIABILITY_LEDGER_URL": self.ledger_url,
            "PYTHONPATH": pythonpath,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            **self.extra_env,
            **extra,
        }

    @property
    def app(self) -> Celery:
        """The client: the same app the workers run, configured from the same environment."""
        if self._app is None:
            env = {**os.environ, **self.env(IMAGINEER_HEALTH_DIR=str(self.workdir / "client.health"))}
            env.pop("IMAGINEER_CONFIG", None)
            self._app = create_app(load_settings(env))
        return self._app

    def client(self) -> redis.Redis:
        return self.broker.client()

    def worker(self, queues: str = "default", *, name: str | None = None, concurrency: int = 2,
               env: dict[str, str] | None = None, wait: bool = True, cls: type[CeleryProcess] = CeleryProcess,
               beat: bool = False, extra_args: list[str] | None = None, **kwargs: Any) -> CeleryProcess:
        name = name or f"{queues.replace(',', '-')}-{len(self.workers)}"
        args = list(extra_args or []) if beat else [INCLUDE, *(extra_args or [])]
        proc = cls(name=name, env=self.env(**(env or {})), logdir=self.workdir / "logs", queues=queues,
                   concurrency=concurrency, beat=beat, extra_args=args, **kwargs)
        self.workers.append(proc)
        return proc.start(wait=wait, timeout=120)

    def send(self, n: int = 1, *, seconds: float = 0.0, queue: str = "default", alloc_mb: int = 0) -> list[str]:
        ids = []
        for _ in range(n):
            tid = str(uuid.uuid4())
            self.app.send_task(TASK, kwargs={"seconds": seconds, "alloc_mb": alloc_mb}, queue=queue, task_id=tid)
            self.queue_of[tid] = queue
            ids.append(tid)
        self.sent.extend(ids)
        return ids

    def kill_group(self, proc: CeleryProcess) -> None:
        """SIGKILL the worker and its pool children: what a container kill (PID 1 gone) does."""
        assert proc.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.proc.pid, signal.SIGKILL)
        proc.proc.wait(30)

    def stop(self) -> None:
        for proc in reversed(self.workers):
            if proc.proc is None:
                continue
            if proc.proc.poll() is None:
                proc.stop(timeout=15)
            with contextlib.suppress(ProcessLookupError):  # pool children orphaned by a killed main process
                os.killpg(proc.proc.pid, signal.SIGKILL)
        self.broker.stop()

    def restart_broker(self, down_seconds: float = 0.0, *, kill: bool = False) -> float:
        """Stop Redis (SIGTERM: an AOF fsync and a clean exit; ``kill``: SIGKILL), wait, start it
        again on the same port and directory. Returns the time it answered again."""
        assert self.broker.proc is not None
        if kill:
            self.broker.proc.kill()
            self.broker.proc.wait(10)
        else:
            self.broker.stop()
        if down_seconds:
            time.sleep(down_seconds)  # the outage itself: nothing is asserted during it
        self.broker = RedisServer(self.workdir / "redis", port=self.broker.port,
                                  extra_args=list(self.redis_args)).start()
        wait_for(self._answers, 30, "redis to load its AOF and answer")
        return time.time()

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.exceptions.RedisError:
            return False

    # dead letters
    def dead_items(self, queue: str = "default", prefix: str = "") -> list[bytes]:
        return list(self.client().lrange(f"{prefix}{queue}.dead", 0, -1))

    def dead_task_ids(self, queues: Iterable[str] = QUEUES, prefix: str = "") -> set[str]:
        ids = set()
        for q in queues:
            for raw in self.dead_items(q, prefix):
                try:
                    ids.add(json.loads(raw)["headers"]["id"])
                except (ValueError, KeyError, TypeError):
                    continue
        return ids


def json_logs(proc: CeleryProcess) -> list[dict[str, Any]]:
    out = []
    for line in proc.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def last_critical(proc: CeleryProcess) -> str:
    """The worker's last CRITICAL log line (e.g. ``Unrecoverable error: ...``), first line only."""
    for entry in reversed(json_logs(proc)):
        if entry.get("level") == "CRITICAL":
            return str(entry.get("message", "")).strip().splitlines()[0][:200]
    return "no CRITICAL log line"


class Supervisor:
    """Restarts a worker that exited, as a Deployment's ``restartPolicy: Always`` would, and
    remembers each crash (a worker must never exit because of what it consumed)."""

    def __init__(self, system: System, proc: CeleryProcess, max_restarts: int = 5, **worker_kwargs: Any) -> None:
        self.system, self.current, self.max_restarts = system, proc, max_restarts
        self.kwargs = {"queues": proc.queues, "concurrency": proc.concurrency, **worker_kwargs}
        self.crashes: list[str] = []

    def __call__(self) -> None:
        p = self.current.proc
        if p is None or p.poll() is None or len(self.crashes) >= self.max_restarts:
            return
        self.crashes.append(f"{self.current.name} exited {p.returncode}: {last_critical(self.current)}")
        if len(self.crashes) < self.max_restarts:
            self.current = self.system.worker(name=f"{self.current.name.split('~')[0]}~{len(self.crashes)}",
                                              wait=False, **self.kwargs)

    def logs(self) -> list[dict[str, Any]]:
        return [e for proc in self.system.workers for e in json_logs(proc)]


def run_trials(n: int, trial: Callable[[int], Trial], *, parallel: bool) -> list[Trial | BaseException]:
    """Run ``n`` trials, concurrently when they are independent systems that mostly wait."""
    if not parallel:
        out: list[Trial | BaseException] = []
        for i in range(n):
            try:
                out.append(trial(i))
            except Exception as exc:
                out.append(exc)
        return out
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(trial, i) for i in range(n)]
        results: list[Trial | BaseException] = []
        for f in futures:
            try:
                results.append(f.result())
            except Exception as exc:
                results.append(exc)
        return results


def _first_run(system: System, ledger: redis.Redis, task_id: str | None) -> str:
    if task_id is None:
        return "none"
    runs = executions(ledger, [task_id])[task_id]
    return (f"{runs[0].host} at {time.strftime('%H:%M:%S', time.localtime(runs[0].start))}"
            f".{int(runs[0].start % 1 * 1000):03d}" if runs else "not run")


def neighbours(system: System, ledger: redis.Redis, task_id: str) -> str:
    """Who ran the tasks sent just before and after ``task_id`` to the same queue (FIFO order)."""
    queue = system.queue_of.get(task_id)
    if queue is None or task_id not in system.sent:
        return ""
    i = system.sent.index(task_id)
    before = next((x for x in reversed(system.sent[:i]) if system.queue_of.get(x) == queue), None)
    after = next((x for x in system.sent[i + 1:] if system.queue_of.get(x) == queue), None)
    return (f"; on {queue}, the task sent before it ran on {_first_run(system, ledger, before)}, "
            f"the one after on {_first_run(system, ledger, after)}")


def recorded_by(system: System, task_id: str, run: Execution) -> bool | None:
    """Whether the worker that ran ``run`` logged the task's success (its result stored), or None
    when that worker was not killed (a second completion then has no excuse)."""
    name = run.host.split("@")[0]
    for proc in system.workers:
        if proc.name == name:
            if proc.proc is None or proc.proc.poll() != -signal.SIGKILL:
                return None
            return f"[{task_id}] succeeded" in proc.log()
    return None


def diagnose(system: System, task_id: str, what: str = "lost", runs: list[Execution] | None = None,
             ledger: redis.Redis | None = None) -> str:
    """What the ledger, the result backend and the worker logs say about one task."""
    try:
        state = system.app.AsyncResult(task_id).state
    except Exception as exc:
        state = f"unknown ({exc.__class__.__name__})"
    lines = []
    for proc in system.workers:
        for entry in json_logs(proc):
            if task_id in str(entry.get("message", "")):
                lines.append(f"{proc.name}: {entry['message'].strip().splitlines()[0][:160]}")
    where = locate(system, task_id)
    ran = "; ".join(f"{r.host} pid {r.pid} {time.strftime('%H:%M:%S', time.localtime(r.start))}"
                    f"+{r.last - r.start:.3f}s{' finished' if r.finished else ' unfinished'}" for r in runs or [])
    near = neighbours(system, ledger, task_id) if ledger is not None and not runs else ""
    return (f"{what} {task_id}: result state {state}; message {where}; runs: {ran or 'none'}{near}; "
            + (" | ".join(lines[-6:]) or "no worker log line names it"))


def locate(system: System, task_id: str) -> str:
    """Where the task's message sits in the broker now: a queue, kombu's unacked hash, a dead list."""
    try:
        c = system.client()
        found = []
        for key in c.scan_iter(count=1000):
            kind = c.type(key).decode()
            if kind == "list" and any(task_id.encode() in item for item in c.lrange(key, 0, -1)):
                found.append(f"in list {key.decode()!r}")
            elif kind == "hash" and any(task_id.encode() in v for v in c.hvals(key)):
                found.append(f"in hash {key.decode()!r}")
        return ", ".join(found) or "nowhere in the broker"
    except redis.exceptions.RedisError as exc:
        return f"unknown ({exc.__class__.__name__})"


def conduct(system: System, ledger: redis.Redis, body: Callable[[Trial], None], *,
            dead: Callable[[], set[str]] | None = None) -> Trial:
    """Run one trial's ``body`` on ``system``, then count what happened to every task it sent.

    The counts are taken whatever the body did (a bounded wait that timed out is a problem, and
    the tasks it waited for show up as lost); the system is always stopped.
    """
    t = Trial(workdir=system.workdir)
    try:
        try:
            body(t)
        except Exception as exc:
            t.problems.append(f"{exc.__class__.__name__}: {exc}")
            for proc in system.workers:  # a worker that died on its own explains most timeouts
                if proc.proc is not None and proc.proc.poll() not in (None, 0, -9):
                    t.problems.append(f"worker {proc.name} exited {proc.proc.returncode}: {last_critical(proc)}")
        dead_ids = dead() if dead is not None else set()
        counts = tally(ledger, system.sent, dead_ids)
        t.merge(counts)
        every = executions(ledger, system.sent)
        lost = [tid for tid, runs in every.items() if tid not in dead_ids and not any(r.finished for r in runs)]
        twice = [tid for tid, runs in every.items() if sum(r.finished for r in runs) > 1 or overlapping(runs)]
        for tid in twice:  # the at-least-once window: killed after the body, before the result
            done = [r for r in every[tid] if r.finished]
            if tid not in dead_ids and len(done) > 1 and recorded_by(system, tid, done[0]) is False:
                t.extra_completions -= len(done) - 1
                t.reruns += len(done) - 1
        t.notes.extend(diagnose(system, tid, "lost", every[tid], ledger) for tid in lost[:5])
        t.notes.extend(diagnose(system, tid, "ran twice", every[tid]) for tid in twice[:5])
    finally:
        system.stop()
    return t
