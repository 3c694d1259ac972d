"""Scenario 7: a burst across the four queues while each group's worker is killed and restarted.

One worker per group, with the chart's concurrency (default 2, training 1, scraping 2, labeling 4,
capped at the machine's vCPUs by the worker itself). While the burst drains, each worker in turn is
``kill -9``\\ed (main process) and a replacement started, as its Deployment would. Every task must
complete exactly once. Then, once results have expired (Celery's result keys carry a Redis TTL of
``CELERY_RESULT_EXPIRES``), the broker's key count and ``used_memory`` must be back at the baseline
taken before the burst: nothing leaks per task.

Trials run concurrently, but only one at a time drains its burst (the CPU-bound part); the others
meanwhile wait for their redeliveries and for their results to expire.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import redis
from imagineer_worker.testing.services import wait_for

from tests.reliability.harness import (
    QUEUES,
    REDELIVERY_BOUND,
    RESULT_EXPIRES,
    Trial,
    burst_size,
    conduct,
    executions,
    trials,
    wait_finished,
)

CONCURRENCY = {"default": 2, "training": 1, "scraping": 2, "labeling": 4}
# "Back at the baseline": the same number of keys, the keys themselves no bigger (MEMORY USAGE,
# exact, summed over every key: a leak inside a long-lived key such as kombu's unacked hash), and
# used_memory within 512 KiB (allocator and client buffers move by a few hundred KiB on their own;
# the burst's peak is megabytes above the baseline).
KEYS_SLACK = 1.05
USED_MEMORY_SLACK = 512 * 1024


def keys_memory(broker: redis.Redis) -> int:
    return sum(broker.memory_usage(k, samples=0) or 0 for k in broker.scan_iter(count=1000))
_draining = threading.Semaphore(1)


@pytest.mark.timeout(3600)
def test_burst_across_the_four_queues_with_each_worker_killed_and_restarted(scenario, ledger: redis.Redis) -> None:
    sc = scenario("7 burst over 4 queues, each worker killed + restarted")
    n = burst_size()

    def trial(i: int) -> Trial:
        s = sc.system(i)

        def body(t: Trial) -> None:
            with _draining:
                workers = {q: s.worker(q, name=f"{q}-0", concurrency=c) for q, c in CONCURRENCY.items()}
                broker = s.client()
                time.sleep(2)  # let start-up writes (mingle, bindings) settle before the baseline
                keys0, mem0, kmem0 = broker.dbsize(), broker.info("memory")["used_memory"], keys_memory(broker)
                peak = mem0
                sending = threading.Thread(target=lambda: [s.send(1, queue=QUEUES[k % 4]) for k in range(n)])
                sending.start()
                kills: dict[str, tuple[float, str]] = {}
                for k, q in enumerate(QUEUES):
                    # kill at 1/5, 2/5, 3/5, 4/5 of the burst completed (each result is one key)
                    wait_for(lambda k=k: broker.dbsize() - keys0 >= (k + 1) * n // 5, 900,
                             f"{(k + 1) * 20}% of the burst")
                    peak = max(peak, broker.info("memory")["used_memory"])
                    proc = workers[q].proc
                    assert proc is not None
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(30)
                    kills[q] = (time.time(), f"{q}-1@")
                    workers[q] = s.worker(q, name=f"{q}-1", concurrency=CONCURRENCY[q])
                    s.send(5, queue=q)  # the queue may be drained already: the replacement must consume
                sending.join(900)
                # drained: what is left are the killed workers' unacked messages
                wait_for(lambda: sum(broker.llen(q) for q in QUEUES) == 0, 900, "the queues to drain")
            t.notes.append(f"trial {i}: killed " + ", ".join(
                f"{q}-0 at {time.strftime('%H:%M:%S', time.localtime(at))}.{int(at % 1 * 1000):03d}"
                for q, (at, _) in kills.items()))
            wait_finished(ledger, s.sent, REDELIVERY_BOUND, f"the burst of {n} to complete")
            last_result = time.time()
            recoveries = []
            runs = executions(ledger, s.sent)
            for killed_at, host in kills.values():
                firsts = [r.last for rr in runs.values() for r in rr if r.finished and r.host.startswith(host)]
                if t.check(bool(firsts), f"the replacement {host} completed nothing"):
                    recoveries.append(min(firsts) - killed_at)
            t.recovery_s = max(recoveries) if recoveries else None

            def back_to_baseline() -> bool:
                return (broker.dbsize() <= keys0 and keys_memory(broker) <= kmem0 * KEYS_SLACK + 1024
                        and broker.info("memory")["used_memory"] <= mem0 + USED_MEMORY_SLACK)

            try:
                wait_for(back_to_baseline, RESULT_EXPIRES + 120, "broker keys and memory back at the baseline",
                         interval=1)
                t.notes.append(f"trial {i}: back at the baseline {time.time() - last_result:.0f}s after the last "
                               f"result (results expire after {RESULT_EXPIRES}s)")
            except TimeoutError:
                t.problems.append(f"broker not back at baseline after the results expired: {broker.dbsize()} keys "
                                  f"(baseline {keys0}) using {keys_memory(broker)} bytes (baseline {kmem0}), "
                                  f"used_memory {broker.info('memory')['used_memory']} (baseline {mem0}); "
                                  f"a key left: {broker.randomkey()!r}")
            t.notes.append(f"trial {i}: used_memory baseline {mem0 / 1e6:.2f} MB, peak {peak / 1e6:.2f} MB, "
                           f"after expiry {broker.info('memory')['used_memory'] / 1e6:.2f} MB; keys {keys0} -> "
                           f"{broker.dbsize()}, their memory {kmem0} -> {keys_memory(broker)} bytes")

        return conduct(s, ledger, body)

    sc.run(trial, parallel=trials())
