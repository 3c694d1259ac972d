"""Worker Deployments: one per enabled group, built from the sizing table in values.yaml."""

from __future__ import annotations

import pytest

from tests.chart.helm import container, env_of, render_chart, worker_groups

GUIDE = {  # queue -> (concurrency, memory limit) from the guide's sizing table and Helm snippet
    "default": (2, "512Mi"),
    "training": (1, "16Gi"),
    "scraping": (2, "2Gi"),
    "labeling": (4, "1Gi"),
}


@pytest.fixture(scope="module")
def default_objects():
    return render_chart()


def _arg_after(args, flag):
    return args[args.index(flag) + 1]


def test_one_deployment_per_guide_queue_with_its_concurrency(default_objects):
    workers = worker_groups(default_objects)
    assert set(workers) == set(GUIDE)
    for name, (concurrency, memory) in GUIDE.items():
        c = container(workers[name])
        assert c["command"] == ["celery"]
        assert c["args"][:4] == ["-A", "imagineer_worker.celery_app", "worker", "--pool=prefork"]
        assert _arg_after(c["args"], "-Q") == name
        assert f"--concurrency={concurrency}" in c["args"]
        assert f"--hostname={name}@%h" in c["args"]
        assert c["resources"]["limits"]["memory"] == memory


def test_gpu_only_on_training(default_objects):
    workers = worker_groups(default_objects)
    training = container(workers["training"])["resources"]
    # ephemeral-storage comes from workerDefaults.resources
    assert training["requests"] == {"cpu": "2", "memory": "12Gi", "nvidia.com/gpu": 1, "ephemeral-storage": "256Mi"}
    assert training["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": 1, "ephemeral-storage": "2Gi"}
    for name in ("default", "scraping", "labeling"):
        resources = container(workers[name])["resources"]
        assert "nvidia.com/gpu" not in resources["requests"] and "nvidia.com/gpu" not in resources["limits"]


def test_training_gets_a_fresh_process_per_job(default_objects):
    assert "--max-tasks-per-child=1" in container(worker_groups(default_objects)["training"])["args"]


def test_grace_period_covers_the_hard_time_limit(default_objects):
    for d in worker_groups(default_objects).values():
        assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 1800 + 60
    objects = render_chart({"celery": {"hardTimeLimitSeconds": 600, "softTimeLimitSeconds": 500},
                            "workers": {"scraping": {"terminationGracePeriodSeconds": 900}}})
    workers = worker_groups(objects)
    assert workers["default"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 660
    assert workers["scraping"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 900
    # below the hard limit it is refused (test_invalid_values.py), never rendered
    assert env_of(workers["default"])["IMAGINEER_TASK_TIME_LIMIT"] == "600"


def test_restricted_security_context_and_writable_tmp_only(default_objects):
    for d in worker_groups(default_objects).values():
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        sc = container(d)["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m for m in container(d)["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
        assert mounts["/etc/imagineer/config"]["readOnly"] is True
        assert "persistentVolumeClaim" in volumes[mounts["/data"]["name"]]


def test_probes_read_health_files_and_never_broadcast(default_objects):
    for d in worker_groups(default_objects).values():
        c = container(d)
        commands = [c[p]["exec"]["command"] for p in ("livenessProbe", "readinessProbe", "startupProbe")]
        assert commands[0][:3] == ["imagineer-workers", "probe", "liveness"]
        assert commands[1] == commands[2] == ["imagineer-workers", "probe", "readiness"]
        assert not any("inspect" in " ".join(cmd) or "ping" in " ".join(cmd) for cmd in commands)


def test_recommended_labels_with_the_group_as_component(default_objects):
    for name, d in worker_groups(default_objects).items():
        for labels in (d["metadata"]["labels"], d["spec"]["template"]["metadata"]["labels"]):
            assert labels["app.kubernetes.io/name"] == "imagineer-workers"
            assert labels["app.kubernetes.io/instance"] == "release"
            assert labels["app.kubernetes.io/component"] == name
            assert labels["app.kubernetes.io/managed-by"] == "Helm"
            assert labels["app.kubernetes.io/version"]
            assert labels["helm.sh/chart"].startswith("imagineer-workers-")
        assert d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == name


def test_images_follow_the_tag_scheme(default_objects):
    for name, d in worker_groups(default_objects).items():
        assert container(d)["image"].startswith(f"imagineer/worker-{name}:")
    objects = render_chart({"image": {"registry": "registry.example.com", "tag": "1.2.3"}})
    training = container(worker_groups(objects)["training"])
    assert training["image"] == "registry.example.com/imagineer/worker-training:1.2.3"


def test_guide_snippet_layout_labeling_colocated_with_default():
    objects = render_chart({"workers": {"default": {"queues": ["default", "labeling"], "concurrency": 4},
                                        "labeling": {"enabled": False}}})
    workers = worker_groups(objects)
    assert set(workers) == {"default", "training", "scraping"}
    args = container(workers["default"])["args"]
    assert _arg_after(args, "-Q") == "default,labeling"
    assert "--concurrency=4" in args


def test_guide_snippet_args_are_accepted_verbatim():
    snippet = ["-A", "server.celery_app.celery", "worker", "--loglevel=INFO", "-Q", "training", "--concurrency=1"]
    objects = render_chart({"workers": {"training": {"args": snippet}}})
    assert container(worker_groups(objects)["training"])["args"] == snippet


def test_extra_args_env_and_scheduling_values_reach_the_pod():
    objects = render_chart({"workers": {"scraping": {
        "extraArgs": ["--without-gossip"], "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "nodeSelector": {"pool": "egress"}, "tolerations": [{"key": "egress", "operator": "Exists"}],
        "priorityClassName": "batch", "podAnnotations": {"team": "data"}, "replicas": 3}}})
    d = worker_groups(objects)["scraping"]
    pod = d["spec"]["template"]["spec"]
    assert d["spec"]["replicas"] == 3
    assert container(d)["args"][-1] == "--without-gossip"
    assert env_of(d)["HTTPS_PROXY"] == "http://proxy:3128"
    assert pod["nodeSelector"] == {"pool": "egress"}
    assert pod["priorityClassName"] == "batch"
    assert d["spec"]["template"]["metadata"]["annotations"]["team"] == "data"


def test_pod_affinity_colocates_labeling_with_the_api_tier():
    affinity = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "api"}}}]}}
    objects = render_chart({"workers": {"labeling": {"affinity": affinity}}})
    assert worker_groups(objects)["labeling"]["spec"]["template"]["spec"]["affinity"] == affinity


def test_a_disabled_group_renders_nothing():
    objects = render_chart({"workers": {"training": {"enabled": False}}})
    assert "training" not in worker_groups(objects)
