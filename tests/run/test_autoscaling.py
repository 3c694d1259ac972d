"""Scale-to-zero with KEDA: the rendered triggers read against a real worker running a real task.

The trap: with late acks a running task is no longer in its queue list (kombu moved it to the
``unacked`` hash), so a Redis ``listLength`` trigger reads 0 while it runs and KEDA, after its
cooldown, would remove the pod that runs it. The chart adds a trigger on ``<prefix>unacked`` to a
group that scales to zero. Here the staging rendering (key prefix ``imagineer:``) with the preview
group on KEDA and ``minReplicas: 0`` runs its preview container; each rendered trigger is evaluated
with the scaler's own Lua script (KEDA v2.21.0 ``pkg/scalers/redis_scaler.go``, the version whose
CRD schemas ``make tools`` generates) in the rendered database, and KEDA's activity rule
(``length > activationListLength``, the ScaledObject active when any trigger is) decides.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from imagineer_worker.testing.fixture_site import FixtureSite

from tests.run.fleet import Fleet, run_values

# Verbatim from KEDA v2.21.0 pkg/scalers/redis_scaler.go (NewRedisScaler): a hash counts with HLEN.
KEDA_REDIS_LENGTH = """
		local listName = KEYS[1]
		local listType = redis.call('type', listName).ok
		if listType == 'zset' then
			return redis.call('zcard', listName)
		elseif listType == 'set' then
			return redis.call('scard', listName)
		elseif listType == 'hash' then
			return redis.call('hlen', listName)
		elseif listType == 'list' or listType == 'none' then
			return redis.call('llen', listName)
		else
			return redis.error_reply('ERR unsupported key type: ' .. listType)
		end
	"""

SCRAPE = "imagineer.scraping.scrape_dataset"


@pytest.fixture(scope="class")
def keda_staging(fleet_factory: Callable[..., Fleet]) -> Fleet:
    values = run_values(workers={"preview": {"autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 2}}})
    values["config"]["file"]["scraping"]["domain_interval_seconds"] = 0
    fleet = fleet_factory("staging", values, components={"preview"})
    fleet.wait_ready("preview")
    return fleet


def scaled_object(fleet: Fleet) -> dict[str, Any]:
    (obj,) = [o for o in fleet.objects if o["kind"] == "ScaledObject"]
    return obj


def address(fleet: Fleet) -> tuple[str, int]:
    """The Redis address the TriggerAuthentication hands KEDA: its Secret's key, as rendered."""
    (auth,) = [o for o in fleet.objects if o["kind"] == "TriggerAuthentication"]
    ref = next(r for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "address")
    secret = next(o for o in fleet.objects if o["kind"] == "Secret" and o["metadata"]["name"] == ref["name"])
    host, port = base64.b64decode(secret["data"][ref["key"]]).decode().rsplit(":", 1)
    return host, int(port)


def readings(fleet: Fleet) -> dict[str, int]:
    """Each trigger's metric, as KEDA's Redis scaler reads it: rendered address, database and key."""
    host, port = address(fleet)
    out = {}
    for trigger in scaled_object(fleet)["spec"]["triggers"]:
        meta = trigger["metadata"]
        client = redis.Redis(host=host, port=port, db=int(meta["databaseIndex"]))
        out[trigger["name"]] = int(client.eval(KEDA_REDIS_LENGTH, 1, meta["listName"]))
    return out


def active(fleet: Fleet, values: dict[str, int]) -> bool:
    """KEDA: a trigger is active when its length exceeds activationListLength; the object when any is."""
    triggers = {t["name"]: t for t in scaled_object(fleet)["spec"]["triggers"]}
    return any(values[name] > int(t["metadata"]["activationListLength"]) for name, t in triggers.items())


def hpa_replicas(fleet: Fleet, values: dict[str, int]) -> int:
    """What the KEDA-made HPA asks for while active: the max over triggers of ceil(value / target)."""
    triggers = {t["name"]: t for t in scaled_object(fleet)["spec"]["triggers"]}
    return max(math.ceil(values[n] / int(t["metadata"]["listLength"])) for n, t in triggers.items())


class TestScaleToZero:
    def test_the_rendering_watches_every_queue_and_the_unacked_hash_with_the_prefix(self, keda_staging: Fleet) -> None:
        spec = scaled_object(keda_staging)["spec"]
        names = [t["metadata"]["listName"] for t in spec["triggers"]]
        assert names == ["imagineer:default", "imagineer:scraping", "imagineer:labeling", "imagineer:unacked"]
        assert spec["minReplicaCount"] == 0
        deployment = next(o for o in keda_staging.objects if o["kind"] == "Deployment"
                          and o["metadata"]["name"] == spec["scaleTargetRef"]["name"])
        assert "replicas" not in deployment["spec"]
        assert spec["cooldownPeriod"] >= deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]

    def test_a_running_task_keeps_the_group_active_although_its_queue_reads_zero(
            self, keda_staging: Fleet, fixture_site: FixtureSite) -> None:
        idle = readings(keda_staging)
        assert not active(keda_staging, idle), idle  # nothing waits, nothing runs: zero is allowed

        app = keda_staging.app()
        result = app.send_task(SCRAPE, kwargs={"dataset_id": "keda", "urls": [f"{fixture_site.base_url}/slow.png?s=6"]})
        deadline = time.monotonic() + 30
        while result.state == "PENDING" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert result.state in ("STARTED", "PROGRESS"), result.state

        running = readings(keda_staging)
        # The trap: the queue lists read 0 while the task runs ...
        assert running["queue-scraping"] == 0 and running["queue-default"] == running["queue-labeling"] == 0, running
        # ... the unacked hash holds it, so the ScaledObject stays active (KEDA keeps one pod at least)
        assert running["unacked"] == 1, running
        assert active(keda_staging, running)
        # and the unacked trigger's huge target never asks for more pods than one.
        assert hpa_replicas(keda_staging, running) == 1

        assert result.get(timeout=60)["images"] == 1
        done = readings(keda_staging)
        assert done["unacked"] == 0 and not active(keda_staging, done), done  # acked: the group may go to zero
