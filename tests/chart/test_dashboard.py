"""The Grafana dashboard shipped with the chart: structure, variables, and every PromQL query valid."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.chart.helm import CHART, by_kind, render_chart
from tests.chart.promtool import check_rules, test_rules, write_yaml

DASHBOARD = CHART / "dashboards" / "imagineer-workers.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# celery-exporter 0.11.2's metrics (a histogram is read through its _bucket/_sum/_count series).
STATES = ("sent", "received", "started", "succeeded", "failed", "retried", "revoked", "rejected")
METRICS = {
    *(f"celery_task_{s}_total" for s in STATES),
    "celery_worker_up", "celery_worker_tasks_active", "celery_queue_length",
    "celery_active_worker_count", "celery_active_process_count",
    "celery_task_runtime_bucket", "celery_task_runtime_sum", "celery_task_runtime_count",
}
# Grafana's global variables that may appear in a query, with a concrete value for promtool.
GLOBALS = {"__rate_interval": "2m", "__interval": "1m", "__range": "6h"}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
# The workers' dead-letter lists <queue>.dead are in the exporter's --queues: never consumed, so the
# queue and worker panels leave them out and one panel shows only them.
NOT_DEAD = r'queue_name!~".+\\.dead"'
ONLY_DEAD = r'queue_name=~"$queue\\.dead"'
PER_QUEUE = ("celery_queue_length", "celery_active_worker_count", "celery_active_process_count")


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def _queries(dashboard):
    """(where, expr) for every panel target and every query variable."""
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} {panel['title']!r} target {target.get('refId')}", target.get("expr")
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            yield f"variable {var['name']}", var["query"]["query"]


def _variables(dashboard):
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def _used_variables(expr):
    return {next(g for g in m.groups() if g) for m in VARIABLE.finditer(expr)}


def _substitute(expr, variables):
    def value(m):
        name = next(g for g in m.groups() if g)
        return GLOBALS.get(name) or {"namespace": "imagineer", "job": "imagineer-workers-exporter",
                                     "queue": "training", "task": ".*"}.get(name, "x")
    assert set(_used_variables(expr)) <= set(variables) | set(GLOBALS), expr
    return VARIABLE.sub(value, expr)


def _label_values(query):
    """label_values(selector, label) -> (selector, label); the metric-only form too."""
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert m, f"not a label_values() query: {query}"
    return m.group(1), m.group(2)


def test_is_a_grafana_dashboard(dashboard):
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] == "imagineer-workers" and dashboard["title"]
    assert dashboard["id"] is None  # provisioned by the sidecar, never an instance's database id
    assert "__inputs" not in dashboard and "__requires" not in dashboard  # not an export for manual import


def test_panel_ids_are_unique_and_panels_laid_out(dashboard):
    panels = list(_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    for p in panels:
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, p["title"]
    titles = [p["title"] for p in panels if p["type"] != "row"]
    assert len(titles) == len(set(titles)), titles


def test_datasource_is_a_variable_never_a_uid(dashboard):
    variables = _variables(dashboard)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            assert not panel.get("targets")
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("expr"), (panel["title"], target)
            assert target.get("datasource", DATASOURCE) == DATASOURCE, (panel["title"], target)
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, var["name"]
    # no other data source anywhere: every "uid" next to type prometheus is the variable
    text = DASHBOARD.read_text()
    assert set(re.findall(r'"uid":\s*"([^"]*)"', text)) <= {"${datasource}", "-- Grafana --", "imagineer-workers"}


def test_template_variables(dashboard):
    variables = _variables(dashboard)
    assert _label_values(variables["queue"]["query"]["query"])[1] == "queue_name"
    assert _label_values(variables["queue"]["query"]["query"])[0].startswith("celery_queue_length")
    assert variables["queue"]["multi"] and variables["queue"]["includeAll"]
    assert variables["queue"]["allValue"] == ".*"  # "All" must also match queues that appear later
    for name in ("namespace", "job"):
        assert name in variables
    for var in variables.values():
        if var["type"] == "query":
            assert var["definition"] == var["query"]["query"]
            # a variable refers only to variables defined before it
            earlier = [v["name"] for v in dashboard["templating"]["list"]]
            earlier = earlier[:earlier.index(var["name"])]
            assert _used_variables(var["query"]["query"]) <= set(earlier), var["name"]


def test_every_query_filters_on_the_selected_scope(dashboard):
    for where, expr in _queries(dashboard):
        if where.startswith("variable"):
            continue
        for selector in re.findall(r"celery_\w+\{([^}]*)\}", expr):
            assert 'namespace=~"$namespace"' in selector and 'job=~"$job"' in selector, where
        for metric in re.findall(r"\b(celery_\w+)", expr):
            assert re.search(rf"\b{metric}\{{", expr), f"{where}: {metric} without a selector"
        if "queue_name" in expr or "celery_queue_length" in expr or "celery_task_" in expr:
            assert 'queue_name=~"$queue"' in expr or ONLY_DEAD in expr, where


def test_required_panels(dashboard):
    exprs = "\n".join(expr for _, expr in _queries(dashboard))
    for state in STATES:
        assert re.search(rf"rate\(celery_task_{state}_total\{{[^}}]*\}}\[\$__rate_interval\]\)", exprs), state
    assert re.search(r"histogram_quantile\(0\.\d+, sum by \(name, le\) \(rate\(celery_task_runtime_bucket", exprs)
    for metric in ("celery_queue_length", "celery_worker_up", "celery_active_worker_count",
                   "celery_worker_tasks_active"):
        assert f"{metric}{{" in exprs, metric


def test_only_exporter_metrics(dashboard):
    for where, expr in _queries(dashboard):
        for metric in re.findall(r"\b(celery_\w+)", expr):
            assert metric in METRICS, f"{where}: unknown metric {metric}"


def test_every_query_is_valid_promql(dashboard, tmp_path: Path):
    """Each target as a recording rule in one file; ``promtool check rules`` parses every expression."""
    variables = _variables(dashboard)
    rules = []
    for i, (where, query) in enumerate(_queries(dashboard)):
        expr = query
        if where.startswith("variable"):
            selector, _label = _label_values(query)
            expr = f"count({selector})"  # label_values() is Grafana's; its selector must be PromQL
        rules.append({"record": f"dashboard:query_{i}", "expr": _substitute(expr, variables),
                      "labels": {"where": where}})
    rule_file = write_yaml(tmp_path / "dashboard-rules.yaml", {"groups": [{"name": "dashboard", "rules": rules}]})
    check_rules(rule_file)


def test_invalid_promql_is_caught(tmp_path: Path):
    """The check above would fail on a broken expression (promtool really parses them)."""
    rule_file = write_yaml(tmp_path / "bad.yaml", {"groups": [{"name": "bad", "rules": [
        {"record": "bad", "expr": "sum by (name) (rate(celery_task_failed_total[5m])"}]}]})
    with pytest.raises(AssertionError, match="promtool check rules"):
        check_rules(rule_file)


def test_chart_ships_the_dashboard_for_the_grafana_sidecar(dashboard):
    objects = render_chart({"monitoring": {"grafanaDashboard": {"enabled": True}}},
                           show_only=["templates/monitoring/dashboard-configmap.yaml"])
    (configmap,) = by_kind(objects, "ConfigMap").values()
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["imagineer-workers.json"]) == dashboard
    assert not [o for o in render_chart() if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]


def _per_queue_queries(dashboard):
    return [(where, expr) for where, expr in _queries(dashboard)
            if not where.startswith("variable") and any(f"{m}{{" in expr for m in PER_QUEUE)]


def test_queue_panels_leave_out_the_dead_letter_lists(dashboard):
    """A dead-letter list is never consumed: no queue length, worker count or queue choice includes one."""
    queue_variable = _variables(dashboard)["queue"]["query"]["query"]
    assert NOT_DEAD in _label_values(queue_variable)[0]
    dead_panels = []
    for where, expr in _per_queue_queries(dashboard):
        selectors = re.findall(r"celery_\w+\{([^}]*)\}", expr)
        if ONLY_DEAD in expr:
            dead_panels.append(where)
            assert all(ONLY_DEAD in s and "celery_queue_length" in expr for s in selectors), where
        else:
            assert all(NOT_DEAD in s for s in selectors), where
    assert len(dead_panels) == 1 and "Dead-letter lists" in dead_panels[0], dead_panels


def test_queue_panels_evaluate_without_the_dead_letter_lists(dashboard, tmp_path: Path):
    """Each per-queue query, run by promtool with "All" queues on a queue and its dead-letter list.

    count() proves a ``sum by (queue_name)`` keeps one queue, sum() that no dead-letter count is added.
    """
    scope = 'namespace="imagineer", job="imagineer-workers-exporter"'
    values = {"celery_queue_length": (2, 5), "celery_active_worker_count": (1, 0),
              "celery_active_process_count": (3, 0)}  # (default, default.dead) as the exporter reports them
    series = [{"series": f'{m}{{{scope}, queue_name="{q}"}}', "values": f"{v}x10"}
              for m, (live, dead) in values.items() for q, v in (("default", live), ("default.dead", dead))]
    all_queues = {"namespace": "imagineer", "job": "imagineer-workers-exporter", "queue": ".*"}
    tests = []
    for _where, expr in _per_queue_queries(dashboard):
        query = VARIABLE.sub(lambda m: all_queues[next(g for g in m.groups() if g)], expr)
        metric = next(m for m in PER_QUEUE if f"{m}{{" in expr)
        expected = values[metric][1] if ONLY_DEAD in expr else values[metric][0]
        tests += [{"expr": f"count({query})", "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": 1}]},
                  {"expr": f"sum({query})", "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": expected}]}]
    assert len(tests) >= 8  # four queries: queued tasks, queue length, workers per queue (2), dead letters
    test_file = write_yaml(tmp_path / "test.yaml", {
        "rule_files": [], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}]})
    proc = test_rules(test_file)
    assert proc.returncode == 0, f"promtool test rules failed:\n{proc.stdout}{proc.stderr}\n{test_file.read_text()}"
