"""Scenario 6: two beats at once (rollout overlap, a second release, ``kubectl scale``), one killed -9.

Beat is RedBeat with its lock in Redis (``IMAGINEER_BEAT_LOCK_TIMEOUT``, here a test-sized 10 s;
beat's loop interval is a fifth of it). Two beats start together: one takes the lock, the other
waits. The lock holder is then killed with -9 (just after a fire in even trials, just before the
next minute in odd ones) and a replacement started, as the Deployment would; the waiting beat must
take over within the lock timeout. Throughout, ``record_disk_usage`` (every minute here:
``IMAGINEER_DISK_SAMPLE_MINUTES=1``) must fire exactly once per minute — never twice (both beats
firing, or the new holder re-firing a period the dead one had fired) and never skipping a minute.
Fires are counted where they land: each run appends one timestamped line to
``<data>/metrics/disk_usage.jsonl``.

In the table: sent = minutes observed, completed = minutes with exactly one fire, parallel
duplicates = extra fires within a minute, lost = minutes without a fire.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
import redis
from imagineer_worker.testing.services import CeleryProcess, wait_for

from tests.reliability.harness import Trial, conduct, json_logs

LOCK_TIMEOUT = 10
LOOP_INTERVAL = max(1, LOCK_TIMEOUT // 5)  # celery_app.redbeat_config
MINUTES_AFTER_TAKEOVER = 2


def _acquired(proc: CeleryProcess) -> list[float]:
    return [datetime.fromisoformat(e["timestamp"]).timestamp() for e in json_logs(proc)
            if e.get("message") == "beat: Acquired lock"]


def _fires(data_dir: Path) -> list[float]:
    path = data_dir / "metrics" / "disk_usage.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["unix_time"] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.timeout(900)
def test_two_beats_fire_each_entry_once_and_a_killed_beat_is_replaced(scenario, ledger: redis.Redis) -> None:
    sc = scenario("6 two beats at once; lock holder killed -9")

    def trial(i: int) -> Trial:
        s = sc.system(i, env={"IMAGINEER_DISK_SAMPLE_MINUTES": "1", "IMAGINEER_BEAT_LOCK_TIMEOUT": str(LOCK_TIMEOUT)})
        data = s.workdir / "data"

        def body(t: Trial) -> None:
            s.worker("default", name="default", concurrency=1)
            beats = [s.worker(name=f"beat-{k}", beat=True, wait=False) for k in (1, 2)]  # started together
            wait_for(lambda: any(_acquired(b) for b in beats), 60, "one beat to take the lock")
            [leader] = [b for b in beats if _acquired(b)]
            wait_for(lambda: _fires(data), 75, "the first fire of record_disk_usage")
            if i % 2:  # just before the next minute: the takeover must still fire that minute, once
                wait_for(lambda: time.time() % 60 >= 55, 61, "5 s before the next minute", interval=0.2)
            assert leader.proc is not None
            os.kill(leader.proc.pid, signal.SIGKILL)
            killed = time.time()
            leader.proc.wait(10)
            beats.append(s.worker(name="beat-3", beat=True, wait=False))  # the Deployment's replacement
            others = [b for b in beats if b is not leader]
            wait_for(lambda: any(_acquired(b) for b in others), LOCK_TIMEOUT + LOOP_INTERVAL + 30,
                     "another beat to take the lock")
            takeover = min(ts for b in others for ts in _acquired(b))
            t.recovery_s = takeover - killed
            t.check(t.recovery_s <= LOCK_TIMEOUT + LOOP_INTERVAL + 1,
                    f"the lock was taken over {t.recovery_s:.1f}s after the kill (lock timeout {LOCK_TIMEOUT}s)")
            last_minute = int(takeover // 60) + MINUTES_AFTER_TAKEOVER
            wait_for(lambda: any(ts // 60 >= last_minute for ts in _fires(data)),
                     60 * (MINUTES_AFTER_TAKEOVER + 1) + 15, f"fires for {MINUTES_AFTER_TAKEOVER} more minutes")
            holders = [b.name for b in beats if _acquired(b)]
            t.check(len(holders) == 2 and sum(len(_acquired(b)) for b in beats) == 2,
                    f"beats that took the lock: {holders}, expected the first holder and one successor")
            per_minute = Counter(int(ts // 60) for ts in _fires(data))
            first, last = min(per_minute), max(per_minute)
            minutes = range(first, last + 1)
            t.sent += len(minutes)
            t.completed += sum(per_minute[m] >= 1 for m in minutes)
            t.parallel += sum(max(0, per_minute[m] - 1) for m in minutes)
            t.lost += sum(per_minute[m] == 0 for m in minutes)
            if t.parallel or t.lost:
                t.notes.append(f"trial {i}: fires per minute {dict(sorted(per_minute.items()))}, "
                               f"kill at minute {int(killed // 60)} +{killed % 60:.0f}s")

        return conduct(s, ledger, body)

    sc.run(trial)
