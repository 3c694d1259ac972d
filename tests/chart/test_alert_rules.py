"""The chart's PrometheusRule, checked and unit-tested by promtool.

Each case renders the chart (monitoring.prometheusRule enabled, plus the case's values), extracts the
PrometheusRule's ``spec`` (a Prometheus rule file), and runs ``promtool test rules`` on series that
imitate celery-exporter 0.11.2: counters born with ``inc(0)`` on a worker's first event, a failed
counter per exception born at 1, every series of a worker purged 10 minutes after its last heartbeat.
promtool's clock starts at the Unix epoch, so the campaign windows below are 1970 dates.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.chart.helm import render_chart
from tests.chart.promtool import check_rules, test_rules, write_yaml

RULE_TEMPLATE = "templates/monitoring/prometheusrule.yaml"
ALERTS = ("ImagineerQueueBacklog", "ImagineerTrainingIdle", "ImagineerBeatMissedRun",
          "ImagineerQueueWithoutWorkers", "ImagineerTaskFailureRate", "ImagineerDeadLetters")

TRAIN = "imagineer.training.train_lora"
DISK = "imagineer.maintenance.record_disk_usage"
SCRAPE = "imagineer.scraping.scrape_dataset"
QUEUES = ("default", "labeling", "scraping", "training")  # consumed by the default worker groups
# Their dead-letter lists, in the exporter's --queues too: LLEN every scrape, 0 workers (nobody consumes them).
DEAD = tuple(f"{q}.dead" for q in QUEUES)

CAMPAIGN_DAY_1 = {"name": "day-1", "start": "1970-01-01T00:00:00Z", "end": "1970-01-02T00:00:00Z"}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def rule_values(**rule: Any) -> dict[str, Any]:
    return {"monitoring": {"prometheusRule": _merge({"enabled": True}, rule)}}


# ---------------------------------------------------------------------------------------------------
# Rendering and promtool plumbing


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    """values -> {alertname: rule}; one rendering per distinct set of values.

    The whole ``spec`` passes ``promtool check rules``; each rule comes back with its group.
    """
    cache: dict[str, dict[str, dict[str, Any]]] = {}

    def get(values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        key = json.dumps(values or {}, sort_keys=True)
        if key not in cache:
            objects = render_chart(_merge(rule_values(), values or {}), show_only=[RULE_TEMPLATE])
            prometheus_rules = [o for o in objects if o["apiVersion"] == "monitoring.coreos.com/v1"
                                and o["kind"] == "PrometheusRule"]
            assert len(prometheus_rules) == 1, [o["kind"] for o in objects]
            spec = prometheus_rules[0]["spec"]
            path = write_yaml(tmp_path_factory.mktemp("rules") / "rules.yaml", spec)
            check_rules(path)
            cache[key] = {r["alert"]: {**r, "group": g} for g in spec["groups"] for r in g["rules"] if "alert" in r}
        return cache[key]

    return get


_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def _go_float(v: float) -> str:
    """Go's %v of a float64, as Prometheus prints {{ $value }}."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e21 else repr(v)


def expand(text: str, labels: dict[str, str], value: float | None) -> str:
    """The few alert-template constructs the chart uses, expanded as Prometheus does."""
    def one(m: re.Match[str]) -> str:
        expr = m.group(1)
        if lm := re.fullmatch(r"\$labels\.(\w+)", expr):
            return labels.get(lm.group(1), "")
        assert value is not None, f"give the expected $value for {text!r}"
        if expr == "$value":
            return _go_float(value)
        if expr == "$value | humanizePercentage":
            assert 1 <= value * 100 < 1000, "only this range of humanize is implemented here"
            return f"{value * 100:.4g}%"
        raise AssertionError(f"template construct not handled by the test: {expr!r}")
    return _TEMPLATE.sub(one, text)


def fires(labels: dict[str, str], value: float | None = None) -> dict[str, Any]:
    """An expected alert: its full label set (less alertname) and $value for the annotations."""
    return {"labels": labels, "value": value}


def promtool_test(rule: dict[str, Any], series: dict[str, str],
                  checks: dict[str, list[dict[str, Any]]], tmp_path: Path, *, interval: str = "1m") -> str:
    """One promtool test group; checks: eval_time -> expected alerts (empty: must not fire).

    Only the alert's own group is loaded (from the checked file's content), evaluated every
    ``interval`` (the series' sample interval too): hours of 1-minute steps over 12 h ranges are slow.
    """
    rule_file = write_yaml(tmp_path / "group.yaml", {"groups": [rule["group"]]})
    alert_tests = []
    for eval_time, alerts in checks.items():
        exp = []
        for a in alerts:
            exp.append({
                "exp_labels": a["labels"],
                "exp_annotations": {k: expand(v, a["labels"], a["value"]) for k, v in rule["annotations"].items()},
            })
        alert_tests.append({"eval_time": eval_time, "alertname": rule["alert"], "exp_alerts": exp})
    test_file = write_yaml(tmp_path / "test.yaml", {
        "rule_files": [str(rule_file)],
        "evaluation_interval": interval,
        "tests": [{"interval": interval,
                   "input_series": [{"series": s, "values": v} for s, v in series.items()],
                   "alert_rule_test": alert_tests}],
    })
    proc = test_rules(test_file)
    assert proc.returncode == 0, f"promtool test rules failed:\n{proc.stdout}{proc.stderr}\n{test_file.read_text()}"
    return proc.stdout


# ---------------------------------------------------------------------------------------------------
# Static checks of the rendered rules


def test_disabled_by_default():
    assert not [o for o in render_chart() if o["kind"] == "PrometheusRule"]


def test_rule_file_passes_promtool_check(rules):
    by_alert = rules()  # the fixture runs `promtool check rules --lint=all --lint-fatal`
    assert set(by_alert) == set(ALERTS)


def test_every_alert_has_routing_labels_and_runbook(rules):
    by_alert = rules()
    for name, rule in by_alert.items():
        assert {"severity", "queue"} <= set(rule["labels"]), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        assert rule["annotations"]["runbook_url"].startswith("https://"), name
        assert rule["annotations"]["runbook_url"].endswith(f"#{name.lower()}"), name
    assert by_alert["ImagineerTaskFailureRate"]["labels"]["severity"] == "warning"


def test_severities_runbook_and_extra_labels_come_from_values(rules):
    by_alert = rules(rule_values(
        runbookUrl="https://runbooks.example.com/imagineer", additionalLabels={"team": "ml-platform"},
        queueLength={"severity": "warning"}, beat={"severity": "info"}, deadLetters={"severity": "critical"}))
    assert by_alert["ImagineerQueueBacklog"]["labels"]["severity"] == "warning"
    assert by_alert["ImagineerBeatMissedRun"]["labels"]["severity"] == "info"
    assert by_alert["ImagineerDeadLetters"]["labels"]["severity"] == "critical"
    for name, rule in by_alert.items():
        assert rule["labels"]["team"] == "ml-platform", name
        assert rule["annotations"]["runbook_url"] == f"https://runbooks.example.com/imagineer#{name.lower()}"


def test_each_alert_can_be_switched_off(rules):
    for key, alert in (("queueLength", "ImagineerQueueBacklog"), ("trainingIdle", "ImagineerTrainingIdle"),
                       ("beat", "ImagineerBeatMissedRun"), ("workersDown", "ImagineerQueueWithoutWorkers"),
                       ("taskFailures", "ImagineerTaskFailureRate"), ("deadLetters", "ImagineerDeadLetters")):
        by_alert = rules(rule_values(**{key: {"enabled": False}}))
        assert set(by_alert) == set(ALERTS) - {alert}


# ---------------------------------------------------------------------------------------------------
# ImagineerQueueBacklog: celery_queue_length > threshold for `for`

BACKLOG = "ImagineerQueueBacklog"


def _backlog(queue: str, severity: str = "critical") -> dict[str, str]:
    return {"queue_name": queue, "queue": queue, "severity": severity}


@pytest.mark.parametrize(("values", "series", "checks"), [
    pytest.param(None, {'celery_queue_length{queue_name="scraping"}': "26x30"},
                 {"14m": [], "16m": [fires(_backlog("scraping"), 26)]}, id="26-for-16m-fires"),
    pytest.param(None, {'celery_queue_length{queue_name="labeling"}': "26x13 0x20"},
                 {"13m": [], "14m": [], "20m": []}, id="26-for-14m-then-drained-never-fires"),
    pytest.param(None, {'celery_queue_length{queue_name="scraping"}': "25x40"},
                 {"30m": []}, id="at-threshold-is-not-above"),
    pytest.param(None, {'celery_queue_length{queue_name="training"}': "500x40",
                        'celery_queue_length{queue_name="default"}': "500x40"},
                 {"30m": []}, id="other-queues-not-watched"),
    pytest.param(None, {'celery_queue_length{queue_name="scraping"}': "26x30",
                        'celery_queue_length{queue_name="labeling"}': "10x10 40x20"},
                 {"16m": [fires(_backlog("scraping"), 26)],
                  "26m": [fires(_backlog("labeling"), 40), fires(_backlog("scraping"), 26)]},
                 id="one-alert-per-queue"),
    pytest.param(rule_values(queueLength={"threshold": 30}), {'celery_queue_length{queue_name="scraping"}': "26x30"},
                 {"16m": [], "25m": []}, id="threshold-from-values-26-under-30"),
    pytest.param(rule_values(queueLength={"threshold": 30}), {'celery_queue_length{queue_name="scraping"}': "31x30"},
                 {"16m": [fires(_backlog("scraping"), 31)]}, id="threshold-from-values-31-over-30"),
    pytest.param(rule_values(queueLength={"for": "5m"}), {'celery_queue_length{queue_name="scraping"}': "26x30"},
                 {"4m": [], "6m": [fires(_backlog("scraping"), 26)]}, id="for-from-values"),
    pytest.param(rule_values(queueLength={"queues": ["training"], "severity": "warning"}),
                 {'celery_queue_length{queue_name="training"}': "26x30",
                  'celery_queue_length{queue_name="scraping"}': "26x30"},
                 {"16m": [fires(_backlog("training", "warning"), 26)]}, id="queues-and-severity-from-values"),
    pytest.param(None, {'celery_queue_length{queue_name="scraping.dead"}': "500x40",
                        'celery_queue_length{queue_name="labeling.dead"}': "500x40"},
                 {"16m": [], "30m": []}, id="dead-letter-lists-never-fire"),
    pytest.param(rule_values(queueLength={"queues": ["default"]}),
                 {'celery_queue_length{queue_name="default.dead"}': "500x40",
                  'celery_queue_length{queue_name="default"}': "3x40"},
                 {"16m": [], "30m": []}, id="dead-letter-list-of-a-watched-queue-never-fires"),
    # a dead-letter list named in the values is still left out: it has its own alert
    pytest.param(rule_values(queueLength={"queues": ["scraping", "scraping.dead"]}),
                 {'celery_queue_length{queue_name="scraping.dead"}': "500x40",
                  'celery_queue_length{queue_name="scraping"}': "26x40"},
                 {"16m": [fires(_backlog("scraping"), 26)]}, id="dead-letter-list-in-values-left-out"),
])
def test_queue_backlog(rules, tmp_path, values, series, checks):
    by_alert = rules(values)
    promtool_test(by_alert[BACKLOG], series, checks, tmp_path)


# ---------------------------------------------------------------------------------------------------
# ImagineerTrainingIdle: no training task started for idleFor, only inside a campaign window

IDLE = "ImagineerTrainingIdle"
IDLE_LABELS = {"queue": "training", "severity": "critical"}


def _started(task: str, host: str = "training@pod-a", queue: str = "training") -> str:
    return f'celery_task_started_total{{name="{task}", hostname="{host}", queue_name="{queue}"}}'


# Five training runs before the test starts, then none: idle from t=0 (5-minute samples, 10 h).
IDLE_SINCE_0 = {_started(TRAIN): "5x120"}


def _campaigns(*campaigns: dict[str, str], **extra: Any) -> dict[str, Any]:
    return rule_values(trainingIdle={"campaigns": list(campaigns), **extra})


@pytest.mark.parametrize(("values", "series", "checks"), [
    pytest.param(_campaigns(CAMPAIGN_DAY_1), IDLE_SINCE_0,
                 {"5h": [], "7h": [fires(IDLE_LABELS)], "9h": [fires(IDLE_LABELS)]},
                 id="idle-7h-inside-campaign-fires"),
    pytest.param(None, IDLE_SINCE_0, {"7h": [], "9h": []}, id="idle-7h-no-campaign-in-values"),
    pytest.param(_campaigns({"name": "later", "start": "1970-01-01T08:00:00Z", "end": "1970-01-01T09:00:00Z"}),
                 IDLE_SINCE_0, {"7h": [], "8h30m": [fires(IDLE_LABELS)], "9h30m": []},
                 id="idle-only-inside-the-window"),
    pytest.param(_campaigns({"name": "over", "start": "1969-12-30T00:00:00Z", "end": "1970-01-01T06:30:00Z"}),
                 IDLE_SINCE_0, {"7h": [], "9h": []}, id="idle-7h-after-campaign-ended"),
    pytest.param(_campaigns({"name": "open", "start": "1970-01-01T06:30:00Z", "end": ""}), IDLE_SINCE_0,
                 {"6h15m": [], "7h": [fires(IDLE_LABELS)], "9h": [fires(IDLE_LABELS)]},
                 id="open-ended-campaign"),
    pytest.param(_campaigns({"name": "a", "start": "1970-01-01T00:00:00Z", "end": "1970-01-01T06:30:00Z"},
                            {"name": "b", "start": "1970-01-01T08:00:00Z", "end": ""}),
                 IDLE_SINCE_0, {"6h45m": [], "7h": [], "8h30m": [fires(IDLE_LABELS)]},
                 id="two-campaigns"),
    pytest.param(_campaigns(CAMPAIGN_DAY_1), {_started(TRAIN): "5x48 6x72"},  # a run at 4 h
                 {"7h": [], "9h": [], "10h": [fires(IDLE_LABELS)]}, id="run-4h-in-resets-the-idle-time"),
    pytest.param(_campaigns(CAMPAIGN_DAY_1),
                 {_started(TRAIN): "5x120", _started(SCRAPE, "scraping@pod-b", "scraping"): "0+1x120"},
                 {"7h": [fires(IDLE_LABELS)]}, id="other-tasks-do-not-count"),
    pytest.param(_campaigns(CAMPAIGN_DAY_1),  # a new worker pod's counter, born at 1 at 4 h
                 {_started(TRAIN): "5x36 stale", _started(TRAIN, "training@pod-new"): "_x47 1x72"},
                 {"7h": [], "9h": []}, id="run-on-a-new-worker-pod-counts"),
    pytest.param(_campaigns(CAMPAIGN_DAY_1),  # training workers' series purged at 1 h, none since
                 {_started(TRAIN): "5x12 stale", _started(SCRAPE, "scraping@pod-b", "scraping"): "0+1x120"},
                 {"5h": [], "7h30m": [fires(IDLE_LABELS)]}, id="no-training-series-at-all-fires"),
    pytest.param(_campaigns(CAMPAIGN_DAY_1, idleFor="8h"), IDLE_SINCE_0,
                 {"7h": [], "9h": [fires(IDLE_LABELS)]}, id="idle-for-from-values"),
    pytest.param(_campaigns(CAMPAIGN_DAY_1, tasks=r"imagineer\.scraping\..+", queue="scraping"),
                 {_started(TRAIN): "0+1x120", _started(SCRAPE, "scraping@pod-b", "scraping"): "3x120"},
                 {"7h": [fires({"queue": "scraping", "severity": "critical"})]}, id="tasks-and-queue-from-values"),
])
def test_training_idle(rules, tmp_path, values, series, checks):
    by_alert = rules(values)
    promtool_test(by_alert[IDLE], series, checks, tmp_path, interval="5m")


# ---------------------------------------------------------------------------------------------------
# ImagineerBeatMissedRun: no successful record_disk_usage within the window (also: no series at all)

BEAT = "ImagineerBeatMissedRun"
BEAT_LABELS = {"queue": "default", "severity": "critical"}


def _succeeded(task: str = DISK, host: str = "default@pod-a", queue: str = "default") -> str:
    return f'celery_task_succeeded_total{{name="{task}", hostname="{host}", queue_name="{queue}"}}'


# Some other series so that the test has data even where the beat task's has none.
QUEUE = {'celery_queue_length{queue_name="default"}': "0x200"}


@pytest.mark.parametrize(("values", "series", "checks"), [
    pytest.param(None, QUEUE, {"1h": [fires(BEAT_LABELS)], "13h": [fires(BEAT_LABELS)]},
                 id="never-seen-fires"),
    # a run at ~5 m (the counter born at 0, then 1), the worker pod gone at 1 h and its series purged,
    # no run since: 12 h after the run it fires; from 13 h on the series is absent for the whole window
    # (both branches carry the same labels: one alert, not one resolving and another firing)
    pytest.param(None, {**QUEUE, _succeeded(): "0 1x11 stale"},
                 {"11h": [], "12h10m": [fires(BEAT_LABELS)], "13h10m": [fires(BEAT_LABELS)],
                  "20h": [fires(BEAT_LABELS)]}, id="series-absent-12h-fires"),
    # the worker stays up: its counter stays at 3 (hourly runs before t=0, none since)
    pytest.param(None, {**QUEUE, _succeeded(): "3x200"},
                 {"11h": [], "12h10m": [fires(BEAT_LABELS)], "14h": [fires(BEAT_LABELS)]},
                 id="no-run-for-12h-fires"),
    pytest.param(None, {**QUEUE, _succeeded(): "3x143 4x56"},  # a run at 12 h
                 {"12h10m": [], "13h": [], "16h": []}, id="run-1h-ago-no-alert"),
    pytest.param(None, {**QUEUE, _succeeded(): "0+1x200"}, {"6h": [], "13h": [], "16h": []},
                 id="hourly-runs-no-alert"),
    pytest.param(None, {**QUEUE, _succeeded(): "3x200", _succeeded(host="default@pod-b"): "_x143 1x56"},
                 {"13h": [], "16h": []}, id="run-on-a-new-worker-pod-counts"),
    pytest.param(None, {**QUEUE, _succeeded(): "3x200",
                        _succeeded("imagineer.scraping.scrape_dataset", "scraping@pod-b", "scraping"): "0+1x200"},
                 {"13h": [fires(BEAT_LABELS)]}, id="other-tasks-do-not-count"),
    pytest.param(None, {**QUEUE, _succeeded(): "3x200",
                        f'celery_task_failed_total{{name="{DISK}", hostname="default@pod-a", '
                        'queue_name="default", exception="OSError"}': "0+1x200"},
                 {"13h": [fires(BEAT_LABELS)]}, id="failed-runs-do-not-count"),
    pytest.param(rule_values(beat={"window": "24h"}), {**QUEUE, _succeeded(): "3x200"},
                 {"13h": [], "16h": []}, id="window-from-values"),
    # staging samples every 12 h: the derived window (24 h) neither flaps between two runs nor
    # misses a whole missed run
    pytest.param({"config": {"diskSampleHours": 12}}, {**QUEUE, _succeeded(): "1x143 2x144 3x144 3x300"},
                 {"11h": [], "13h": [], "23h": [], "25h": [], "35h": [], "47h": [], "60h10m": [fires(BEAT_LABELS)]},
                 id="12h-interval-runs-never-flap"),
    pytest.param(rule_values(beat={"task": "imagineer.scraping.scrape_dataset"}),
                 {**QUEUE, _succeeded(): "0+1x200"},
                 {"13h": [fires(BEAT_LABELS)]},
                 id="task-from-values"),
])
def test_beat_missed_run(rules, tmp_path, values, series, checks):
    by_alert = rules(values)
    promtool_test(by_alert[BEAT], series, checks, tmp_path, interval="5m")


# ---------------------------------------------------------------------------------------------------
# ImagineerQueueWithoutWorkers: a consumed queue with celery_active_worker_count < 1, or none, for `for`

DOWN = "ImagineerQueueWithoutWorkers"


def _workers(**override: str) -> dict[str, str]:
    counts = {q: "1x40" for q in QUEUES} | override
    return {f'celery_active_worker_count{{queue_name="{q}"}}': v for q, v in counts.items() if v}


def _down(queue: str) -> dict[str, str]:
    return {"queue_name": queue, "queue": queue, "severity": "critical"}


@pytest.mark.parametrize(("values", "series", "checks"), [
    pytest.param(None, _workers(default="2x40", training="3x40"), {"10m": [], "30m": []}, id="workers-present"),
    pytest.param(None, _workers(training="1x9 0x30"),
                 {"9m": [], "13m": [], "15m": [fires(_down("training"))], "30m": [fires(_down("training"))]},
                 id="count-0-fires-after-for"),
    pytest.param(None, _workers(training="1x9 0x2 1x20"), {"15m": [], "30m": []}, id="short-gap-does-not-fire"),
    pytest.param(None, _workers(training="1x9 stale"),
                 {"13m": [], "16m": [fires(_down("training"))], "30m": [fires(_down("training"))]},
                 id="series-purged-fires"),
    pytest.param(None, _workers(labeling=""), {"4m": [], "6m": [fires(_down("labeling"))]},
                 id="never-reported-fires"),
    pytest.param(None, {'celery_queue_length{queue_name="default"}': "0x40"},
                 {"6m": [fires(_down(q)) for q in QUEUES]}, id="exporter-reports-nothing"),
    pytest.param(rule_values(workersDown={"for": "15m"}), _workers(training="1x9 0x30"),
                 {"15m": [], "23m": [], "25m": [fires(_down("training"))]}, id="for-from-values"),
    pytest.param(rule_values(workersDown={"severity": "warning"}), _workers(scraping="0x40"),
                 {"6m": [{"labels": {**_down("scraping"), "severity": "warning"}, "value": None}]},
                 id="severity-from-values"),
    # what the exporter reports for the dead-letter lists in its --queues: 0 workers, always
    pytest.param(None, {**_workers(), **{f'celery_active_worker_count{{queue_name="{d}"}}': "0x40" for d in DEAD}},
                 {"6m": [], "30m": []}, id="dead-letter-lists-never-fire"),
    pytest.param(None, {**_workers(training="0x40"),
                        **{f'celery_active_worker_count{{queue_name="{d}"}}': "0x40" for d in DEAD}},
                 {"6m": [fires(_down("training"))]}, id="dead-letter-lists-next-to-an-unconsumed-queue"),
])
def test_queue_without_workers(rules, tmp_path, values, series, checks):
    by_alert = rules(values)
    promtool_test(by_alert[DOWN], series, checks, tmp_path)


def test_queue_without_workers_follows_the_enabled_groups(rules, tmp_path):
    by_alert = rules({"workers": {"scraping": {"enabled": False}}})
    promtool_test(by_alert[DOWN], _workers(scraping=""), {"10m": []}, tmp_path)
    by_alert = rules({"exporter": {"extraQueues": ["exports"]}})
    promtool_test(by_alert[DOWN], _workers(), {"10m": [fires(_down("exports"))]}, tmp_path)
    # a dead-letter list named in extraQueues is reported, but never "without workers"
    by_alert = rules({"exporter": {"extraQueues": ["exports", "exports.dead"]}})
    promtool_test(by_alert[DOWN], _workers(exports="1x40"), {"10m": []}, tmp_path)
    assert "dead" not in by_alert[DOWN]["expr"].replace(r'queue_name!~".+\\.dead"', "")


SCALE_TO_ZERO = {"workers": {"training": {"autoscaling": {"enabled": True}}}}  # KEDA, minReplicas 0


@pytest.mark.parametrize(("series", "checks"), [
    pytest.param({**_workers(training=""), 'celery_queue_length{queue_name="training"}': "0x40"},
                 {"10m": [], "30m": []}, id="idle-at-zero-is-not-a-fault"),
    pytest.param({**_workers(training="0x40"), 'celery_queue_length{queue_name="training"}': "0x5 1x35"},
                 {"9m": [], "11m": [fires(_down("training"))]}, id="messages-waiting-without-a-worker-fire"),
    pytest.param({**_workers(training=""), 'celery_queue_length{queue_name="training"}': "1x40"},
                 {"4m": [], "6m": [fires(_down("training"))]}, id="never-reported-worker-with-messages-fires"),
    pytest.param({**_workers(training="0x2 1x38"), 'celery_queue_length{queue_name="training"}': "1x40"},
                 {"10m": [], "30m": []}, id="woken-up-in-time"),
    pytest.param({**_workers(scraping="0x40", training=""), 'celery_queue_length{queue_name="training"}': "0x40"},
                 {"6m": [fires(_down("scraping"))]}, id="the-other-queues-keep-their-rule"),
])
def test_queue_without_workers_for_a_group_that_scales_to_zero(rules, tmp_path, series, checks):
    """Training on KEDA with minReplicas 0 has no worker while idle: the alert counts its queue only
    while messages wait in it (and no worker consumes it for `for`)."""
    promtool_test(rules(SCALE_TO_ZERO)[DOWN], series, checks, tmp_path)


# ---------------------------------------------------------------------------------------------------
# ImagineerTaskFailureRate: failed / (failed + succeeded) over window > ratio, at least minFailures

FAIL = "ImagineerTaskFailureRate"


def _counter(state: str, exception: str | None = None, task: str = SCRAPE, host: str = "scraping@pod-a") -> str:
    exc = f', exception="{exception}"' if exception is not None else ""
    return f'celery_task_{state}_total{{name="{task}", hostname="{host}", queue_name="scraping"{exc}}}'


def _fail(ratio: float, task: str = SCRAPE, severity: str = "warning") -> dict[str, Any]:
    return fires({"name": task, "queue_name": "scraping", "queue": "scraping", "severity": severity}, ratio)


def _rates(succeeded_per_min: int, failed_per_min: int) -> dict[str, str]:
    """Steady rates (the inc(0) failed series included); from 15 m on the series are older than the window."""
    return {_counter("succeeded"): f"100+{succeeded_per_min}x80",
            _counter("failed", ""): "0x80",
            _counter("failed", "TimeoutError"): f"7+{failed_per_min}x80"}


def _onset(succeeded_per_min: int, failed_per_min: int, at: int = 20) -> dict[str, str]:
    """Like _rates, but the failures start at minute ``at``: the condition holds from ~``at`` + 9 m."""
    return {**_rates(succeeded_per_min, 0), _counter("failed", "TimeoutError"): f"7x{at} 7+{failed_per_min}x{80 - at}"}


@pytest.mark.parametrize(("values", "series", "checks"), [
    pytest.param(None, _onset(10, 2), {"35m": [], "38m": [], "41m": [_fail(2 / 12)], "55m": [_fail(2 / 12)]},
                 id="above-ratio-fires-after-for"),
    pytest.param(None, _rates(20, 1), {"26m": [], "55m": []}, id="below-ratio"),
    pytest.param(None, _rates(0, 0), {"20m": []}, id="idle-no-division-alert"),
    pytest.param(None, {_counter("succeeded"): "0x80", _counter("failed", ""): "0x80",
                        _counter("failed", "TimeoutError"): "0x9 1x5 2x45"},
                 {"15m": [], "25m": []}, id="too-few-failures"),
    pytest.param(None, {**_rates(10, 2), **{k.replace(SCRAPE, "imagineer.labeling.caption"): v
                                            for k, v in _rates(20, 1).items()}},
                 {"26m": [_fail(2 / 12)]}, id="per-task"),
    pytest.param(rule_values(taskFailures={"ratio": 0.2}), _rates(10, 2), {"26m": [], "55m": []},
                 id="ratio-from-values-not-exceeded"),
    pytest.param(rule_values(taskFailures={"ratio": 0.2}), _rates(10, 3), {"26m": [_fail(3 / 13)]},
                 id="ratio-from-values-exceeded"),
    pytest.param(rule_values(taskFailures={"for": "20m"}), _onset(10, 2), {"41m": [], "51m": [_fail(2 / 12)]},
                 id="for-from-values"),
    pytest.param(rule_values(taskFailures={"minFailures": 50}), _rates(10, 2), {"35m": [], "55m": []},
                 id="min-failures-from-values"),
    # tasks past config.maxDeliveries: a task-failed event with repr(DeliveryLimitExceeded(...)), which the
    # exporter labels exception="DeliveryLimitExceeded" (one such task so far, then 2 a minute from 20 m)
    pytest.param(None, {**_rates(10, 0), _counter("failed", "DeliveryLimitExceeded"): "1x20 1+2x60"},
                 {"35m": [], "41m": [_fail(2 / 12)]}, id="delivery-limit-exceeded-counts"),
])
def test_task_failure_rate(rules, tmp_path, values, series, checks):
    by_alert = rules(values)
    promtool_test(by_alert[FAIL], series, checks, tmp_path)


def test_task_failure_rate_counts_the_first_failure_of_a_new_series(rules, tmp_path):
    by_alert = rules()
    # a fresh worker pod: its first event creates the succeeded and failed{exception=""} series at 0
    # (inc(0)); the task then fails at 5, 6 and 7 min, creating failed{exception="ConnectionError"} at 1
    series = {_counter("succeeded", host="scraping@pod-new"): "_x4 0x40",
              _counter("failed", "", host="scraping@pod-new"): "_x4 0x40",
              _counter("failed", "ConnectionError", host="scraping@pod-new"): "_x5 1 2 3x40"}
    promtool_test(by_alert[FAIL], series, {"18m": [_fail(1.0)]}, tmp_path)


# ---------------------------------------------------------------------------------------------------
# ImagineerDeadLetters: a dead-letter list <queue>.dead non-empty for `for`

DEAD_LETTERS = "ImagineerDeadLetters"


def _dead(queue: str = "default", **override: str) -> dict[str, str]:
    """celery_queue_length of every queue and its dead-letter list as the exporter reports them (0 each)."""
    lengths = {q: "0x40" for q in (*QUEUES, *DEAD)} | {f"{queue}.dead": "0x40"} | override
    return {f'celery_queue_length{{queue_name="{q}"}}': v for q, v in lengths.items() if v}


def _dead_fires(queue: str, value: float, severity: str = "warning") -> dict[str, Any]:
    return fires({"queue_name": f"{queue}.dead", "queue": queue, "severity": severity}, value)


@pytest.mark.parametrize(("values", "series", "checks"), [
    pytest.param(None, _dead(), {"15m": [], "30m": []}, id="empty-lists-never-fire"),
    pytest.param(None, _dead(**{"default.dead": "0x4 3x40"}),
                 {"10m": [], "14m": [], "15m": [fires({"queue_name": "default.dead", "queue": "default",
                                                       "severity": "warning"}, 3)]},
                 id="non-empty-default-dead-fires-after-for"),
    pytest.param(None, _dead(**{"training.dead": "0x4 1+1x40"}),
                 {"14m": [], "15m": [_dead_fires("training", 11)], "25m": [_dead_fires("training", 21)]},
                 id="growing-list-fires-with-its-length"),
    pytest.param(None, _dead(**{"scraping.dead": "0x4 2x8 0x30"}),
                 {"10m": [], "15m": [], "30m": []}, id="replayed-within-for-never-fires"),
    pytest.param(None, _dead(**{"scraping.dead": "2x20 0x20"}),
                 {"15m": [_dead_fires("scraping", 2)], "21m": []}, id="resolves-once-replayed"),
    pytest.param(None, _dead(**{"default": "500x40", "scraping": "500x40"}), {"15m": [], "30m": []},
                 id="queue-backlog-is-not-a-dead-letter"),
    pytest.param(None, _dead(**{"default.dead": "1x40", "labeling.dead": "4x40"}),
                 {"15m": [_dead_fires("default", 1), _dead_fires("labeling", 4)]}, id="one-alert-per-list"),
    pytest.param(None, {'celery_queue_length{queue_name="exports.dead"}': "2x40"},
                 {"15m": [_dead_fires("exports", 2)]}, id="any-dead-letter-list-the-exporter-reports"),
    pytest.param(rule_values(deadLetters={"for": "30m", "severity": "critical"}), _dead(**{"default.dead": "1x40"}),
                 {"15m": [], "29m": [], "30m": [_dead_fires("default", 1, "critical")]},
                 id="for-and-severity-from-values"),
])
def test_dead_letters(rules, tmp_path, values, series, checks):
    by_alert = rules(values)
    promtool_test(by_alert[DEAD_LETTERS], series, checks, tmp_path)


def test_dead_letters_says_what_to_do(rules):
    rule = rules(_merge(rule_values(), {"config": {"maxDeliveries": 5, "deadLetterMaxLength": 250}}))[DEAD_LETTERS]
    description = " ".join(rule["annotations"]["description"].split())
    for text in ("LRANGE {{ $labels.queue_name }} 0 9", "LMOVE {{ $labels.queue_name }} {{ $labels.queue }} LEFT LEFT",
                 "imagineer-workers doctor", 'celery_task_failed_total{exception="DeliveryLimitExceeded"}',
                 "config.maxDeliveries (5)", "at most 250 messages", "broker.keyPrefix"):
        assert text in description, text
    assert rule["labels"]["queue"] == "{{ $labels.queue }}"
    assert rule["annotations"]["runbook_url"].endswith("#imagineerdeadletters")
