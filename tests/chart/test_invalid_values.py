"""Bad values fail ``helm template`` with a message naming the value path: one row per mistake.

The split with the chart's helm-unittest suites (charts/imagineer-workers/tests): there, one
template's facts, and every refusal of ``imagineer.validateValues`` once (validate_test.yaml);
here, what needs the real schema or several values at once: the schema's refusals (wrong types,
unknown keys, out-of-range numbers, as helm reports them), memory quantities in every form
Kubernetes accepts, and the few template refusals whose shape the unit suite does not repeat
(other groups, other limits).
"""

from __future__ import annotations

import pytest

from tests.chart.helm import render_chart, render_error

INVALID = [
    # (values, a string the message must contain)
    ({"workers": {"default": {"concurrency": "two"}}}, "workers.default.concurrency"),
    ({"workers": {"default": {"concurrency": 0}}}, "workers.default.concurrency"),
    ({"workers": {"scraping": {"replicas": -1}}}, "workers.scraping.replicas"),
    ({"workers": {"training": {"checkpointSizeGi": 16}}},
     "workers.training.resources.limits.memory 16Gi is below workers.training.checkpointSizeGi"),
    ({"workers": {"labeling": {"checkpointSizeGi": 1, "resources": {"limits": {"memory": "4Gi"}}}}},
     "workers.labeling.resources.limits.memory 4Gi is below"),
    ({"workers": {"default": {"queues": ["default", "gpu"]}}}, "workers.default.queues.1"),
    ({"workers": {"default": {"queues": []}}}, "workers.default.queues"),
    ({"workers": {"default": {"concurency": 2}}}, "concurency"),
    ({"workers": {"Bad_Name": {"queues": ["default"]}}}, "Bad_Name"),
    ({"beat": {"replicas": 2}}, "replicas"),
    ({"config": {"purgeTrainingHour": 25}}, "config.purgeTrainingHour"),
    ({"config": {"diskSampleHours": 0}}, "config.diskSampleHours"),
    ({"config": {"maintenanceQueue": "maintenance"}}, "config.maintenanceQueue"),
    ({"config": {"maintenanceQueue": "training"}, "workers": {"training": {"enabled": False}}},
     'config.maintenanceQueue "training" is consumed by no enabled worker group'),
    ({"broker": {"url": "http://redis:6379"}}, "broker.url"),
    ({"workers": {"scraping": {"resources": {"limits": {"memory": "lots"}}}}},
     "workers.scraping.resources.limits.memory"),
    ({"workers": {"default": {"extraEnv": [{"value": "x"}]}}}, "workers.default.extraEnv.0"),
    ({"persistence": {"mountPath": "data"}}, "persistence.mountPath"),
    ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
    # monitoring and Flower
    ({"flower": {"basicAuth": {"username": "a:b"}}}, "flower.basicAuth.username"),
    ({"monitoring": {"prometheusRule": {"queueLength": {"for": "15 minutes"}}}},
     "monitoring.prometheusRule.queueLength.for"),
    ({"monitoring": {"prometheusRule": {"taskFailures": {"ratio": 5}}}},
     "monitoring.prometheusRule.taskFailures.ratio"),
    ({"monitoring": {"prometheusRule": {"trainingIdle": {"campaigns": [{"name": "q1", "start": "next monday"}]}}}},
     "monitoring.prometheusRule.trainingIdle.campaigns.0.start"),
    ({"monitoring": {"prometheusRule": {"trainingIdle": {"campaigns": [{"start": "2027-01-04T00:00:00Z"}]}}}},
     "monitoring.prometheusRule.trainingIdle.campaigns.0"),
    # worker settings: Redis key prefix, RedBeat lock, delivery cap, ephemeral storage
    ({"broker": {"keyPrefix": "my app:"}}, "broker.keyPrefix"),
    ({"broker": {"keyPrefix": "{tag}:"}}, "broker.keyPrefix"),
    ({"beat": {"lockTimeoutSeconds": -1}}, "beat.lockTimeoutSeconds"),
    ({"beat": {"lockTimeoutSeconds": "60s"}}, "beat.lockTimeoutSeconds"),
    ({"config": {"maxDeliveries": 0}}, "config.maxDeliveries"),
    ({"config": {"deadLetterMaxLength": -1}}, "config.deadLetterMaxLength"),
    ({"workers": {"labeling": {"resources": {"limits": {"ephemeral-storage": "100Mi"}}}}},
     "workers.labeling.resources.limits.ephemeral-storage 100Mi is below tmpSizeLimit"),
    ({"exporter": {"port": 0}}, "exporter.port"),
    ({"exporter": {"extraQueues": ["bad queue"]}}, "exporter.extraQueues.0"),
    # rollouts, placement and autoscaling
    ({"celery": {"hardTimeLimitSeconds": 3000, "visibilityTimeoutSeconds": 4000},
      "workers": {"training": {"terminationGracePeriodSeconds": 2000}}},
     "workers.training.terminationGracePeriodSeconds (2000) is below celery.hardTimeLimitSeconds (3000)"),
    ({"workers": {"scraping": {"strategy": {"type": "OnDelete"}}}}, "workers.scraping.strategy.type"),
    ({"workers": {"scraping": {"strategy": {"rollingUpdate": {"maxSurge": "one"}}}}},
     "workers.scraping.strategy.rollingUpdate.maxSurge"),
    ({"workers": {"scraping": {"autoscaling": {"enabled": True, "mode": "vpa"}}}}, "workers.scraping.autoscaling.mode"),
    ({"workers": {"scraping": {"autoscaling": {"enabled": True, "maxReplicas": 0}}}},
     "workers.scraping.autoscaling.maxReplicas"),
    ({"workers": {"scraping": {"autoscaling": {"enabled": True, "listLength": "5"}}}},
     "workers.scraping.autoscaling.listLength"),
    ({"workers": {"scraping": {"safeToEvict": "no"}}}, "workers.scraping.safeToEvict"),
    ({"keda": {"addressKey": ""}}, "keda.addressKey"),
    # not a Kubernetes quantity ("K" is not a suffix: kubectl would refuse the pod)
    *[({"workers": {"training": {"resources": {"limits": {"memory": bad}}}}},
       "workers.training.resources.limits.memory") for bad in ("16K", "16 Gi", "16gi", "Gi")],
]

# The memory check reads every suffix Kubernetes accepts: a training group holding an 8 GiB
# checkpoint needs a limit of 8 x 1.3 = 10.4 GiB; each form below says 11 GiB, or 10 GiB.
ELEVEN_GI = ["11Gi", "11264Mi", "11534336Ki", 11811160064, "11811160064", "11811161k", "11812M", "11.9G",
             "0.0108Ti", "11811160064000m", "0.0000105Pi", "0.0119T"]
TEN_GI = ["10Gi", "10240Mi", 10737418240, "10737419k", "10738M", "10.7G", "0.0097Ti", "10737418240000m"]


@pytest.mark.parametrize(("values", "expected"), INVALID, ids=[e.split(" ")[0] for _, e in INVALID])
def test_invalid_values_fail_with_a_message_naming_the_value(values, expected):
    message = render_error(values)
    # The chart's own checks name the value as a dotted path; helm's schema check as a JSON pointer.
    assert expected in message or f"at '/{expected.replace('.', '/')}'" in message, message


def test_every_problem_is_listed_at_once_with_a_count() -> None:
    """imagineer.validateValues collects every refusal and fails once: a count, then one per line."""
    message = render_error({"workers": {"scraping": {"terminationGracePeriodSeconds": 120}},
                            "flower": {"enabled": True},
                            "monitoring": {"serviceMonitor": {"enabled": True}}, "exporter": {"enabled": False}})
    lines = message.split("3 problems with the values, one per line:\n", 1)[1].split("\n\n")[0].splitlines()
    assert [line.split(" ")[0] for line in lines] == [
        "workers.scraping.terminationGracePeriodSeconds", "flower.basicAuth.username",
        "monitoring.serviceMonitor.enabled"], message


@pytest.mark.parametrize("memory", ELEVEN_GI, ids=str)
def test_memory_in_any_kubernetes_form_is_read_by_its_value(memory):
    render_chart({"workers": {"training": {"checkpointSizeGi": 8, "resources": {"limits": {"memory": memory}}}}})


@pytest.mark.parametrize("memory", TEN_GI, ids=str)
def test_memory_below_the_checkpoints_is_refused_in_any_form(memory):
    assert "is below workers.training.checkpointSizeGi x 1.3 x concurrency = 10.4Gi" in render_error(
        {"workers": {"training": {"checkpointSizeGi": 8, "resources": {"limits": {"memory": memory}}}}})
