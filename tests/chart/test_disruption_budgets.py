"""PodDisruptionBudgets (workers.<group>.pdb): one per worker group that may run several pods."""

from __future__ import annotations

import pytest

from tests.chart.helm import by_kind, render_chart, render_error, worker_groups

FULL = "release-imagineer-workers"


def budgets(values=None, values_file=None):
    return by_kind(render_chart(values, values_file=values_file), "PodDisruptionBudget")


def test_none_with_one_replica_per_group():
    assert not budgets()
    assert not budgets(values_file="staging")


def test_prod_has_one_per_multi_replica_group_none_for_training_or_beat():
    objects = render_chart(values_file="prod")
    pdbs = by_kind(objects, "PodDisruptionBudget")
    assert set(pdbs) == {f"{FULL}-default", f"{FULL}-scraping", f"{FULL}-labeling"}
    groups = worker_groups(objects)
    for name, pdb in pdbs.items():
        group = name.removeprefix(f"{FULL}-")
        assert groups[group]["spec"]["replicas"] == 2
        assert pdb["apiVersion"] == "policy/v1"
        assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        # The budget selects exactly its group's pods: no other Deployment's.
        selector = pdb["spec"]["selector"]["matchLabels"]
        for other, deployment in by_kind(objects, "Deployment").items():
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            matches = all(labels.get(k) == v for k, v in selector.items())
            assert matches == (other == name), (name, other)


def test_training_is_off_by_default_even_with_several_replicas_and_can_be_turned_on():
    assert f"{FULL}-training" not in budgets({"workers": {"training": {"replicas": 2}}})
    assert f"{FULL}-training" in budgets({"workers": {"training": {"replicas": 2, "pdb": {"enabled": True}}}})


def test_a_group_can_opt_out():
    assert f"{FULL}-scraping" not in budgets({"workers": {"scraping": {"replicas": 3, "pdb": {"enabled": False}}}})


@pytest.mark.parametrize(("pdb", "field", "value"), [
    ({"maxUnavailable": "50%"}, "maxUnavailable", "50%"),
    ({"minAvailable": 2}, "minAvailable", 2),
    ({"minAvailable": "50%"}, "minAvailable", "50%"),
])
def test_max_unavailable_or_min_available(pdb, field, value):
    spec = budgets({"workers": {"scraping": {"replicas": 3, "pdb": pdb}}})[f"{FULL}-scraping"]["spec"]
    assert spec[field] == value
    assert len({"minAvailable", "maxUnavailable"} & set(spec)) == 1


@pytest.mark.parametrize(("pdb", "message"), [
    ({"minAvailable": 3}, "workers.scraping.pdb.minAvailable 3 leaves no pod of the group (3 at the fewest)"),
    ({"minAvailable": "100%"}, "workers.scraping.pdb.minAvailable 100% leaves no pod"),
    ({"maxUnavailable": 0}, "workers.scraping.pdb.maxUnavailable 0 lets no pod go"),
    ({"maxUnavailable": None}, "/workers/scraping/pdb/maxUnavailable': got null"),  # the schema
])
def test_a_budget_that_would_block_every_drain_is_refused(pdb, message):
    assert message in render_error({"workers": {"scraping": {"replicas": 3, "pdb": pdb}}})


def test_an_autoscaled_group_gets_one_when_it_may_grow_past_one_pod():
    scaled = {"enabled": True, "mode": "keda", "minReplicas": 1, "maxReplicas": 4}
    assert f"{FULL}-scraping" in budgets({"workers": {"scraping": {"autoscaling": scaled}}})
    assert f"{FULL}-scraping" not in budgets({"workers": {"scraping": {"replicas": 3, "autoscaling": {
        **scaled, "maxReplicas": 1}}}})
    message = render_error({"workers": {"scraping": {"autoscaling": scaled, "pdb": {"minAvailable": 1}}}})
    assert "workers.scraping.pdb.minAvailable 1 leaves no pod of the group (1 at the fewest)" in message
