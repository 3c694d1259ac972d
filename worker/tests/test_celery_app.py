"""The Celery settings every queue shares, task routes and the beat schedule."""

from __future__ import annotations

import ssl
import subprocess
import sys

import pytest
from celery.schedules import crontab

from imagineer_worker.celery_app import (
    beat_schedule,
    celery,
    celery_config,
    redbeat_config,
    task_modules,
    task_routes,
)
from imagineer_worker.config import load_settings


@pytest.fixture(scope="module", autouse=True)
def _task_modules_loaded():
    celery.loader.import_default_modules()  # what a worker does at start-up


def test_guide_settings_for_every_queue():
    conf = celery_config(load_settings({}))
    assert conf["task_acks_late"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert (conf["task_soft_time_limit"], conf["task_time_limit"]) == (1500, 1800)
    assert conf["accept_content"] == ["json"] and conf["result_accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["worker_send_task_events"] is True and conf["task_send_sent_event"] is True
    assert conf["task_reject_on_worker_lost"] is True


def test_visibility_timeout_exceeds_the_hard_limit_in_broker_and_backend():
    conf = celery_config(load_settings({"IMAGINEER_VISIBILITY_TIMEOUT": "7200"}))
    for key in ("broker_transport_options", "result_backend_transport_options"):
        assert conf[key]["visibility_timeout"] == 7200 > conf["task_time_limit"]


def test_result_expires_from_environment():
    assert celery_config(load_settings({"CELERY_RESULT_EXPIRES": "3600"}))["result_expires"] == 3600


def test_tls_urls_verify_the_server_against_the_configured_ca(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    conf = celery_config(load_settings({"CELERY_BROKER_URL": "rediss://r:6380/0",
                                        "CELERY_RESULT_BACKEND": "rediss://r:6380/1",
                                        "IMAGINEER_REDIS_CA_CERT": str(ca)}))
    expected = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca)}
    assert conf["broker_use_ssl"] == conf["redis_backend_use_ssl"] == expected
    assert celery_config(load_settings({}))["broker_use_ssl"] is None


def test_sentinel_master_name_goes_to_both_transports():
    conf = celery_config(load_settings({
        "CELERY_BROKER_URL": "sentinel://s1:26379;sentinel://s2:26379",
        "IMAGINEER_REDIS_SENTINEL_MASTER": "mymaster"}))
    assert conf["broker_transport_options"]["master_name"] == "mymaster"
    assert conf["result_backend_transport_options"]["master_name"] == "mymaster"


def test_key_prefix_goes_to_both_transports_and_every_key_of_ours():
    settings = load_settings({"IMAGINEER_REDIS_KEY_PREFIX": "app1:"})
    conf = celery_config(settings)
    assert conf["broker_transport_options"]["global_keyprefix"] == "app1:"
    assert conf["result_backend_transport_options"]["global_keyprefix"] == "app1:"
    assert conf["redbeat_key_prefix"] == "app1:redbeat:"
    assert settings.key("imagineer:beat:started") == "app1:imagineer:beat:started"
    assert "global_keyprefix" not in celery_config(load_settings({}))["broker_transport_options"]


def test_beat_is_redbeat_with_a_lock_it_renews_five_times_per_period():
    conf = celery_config(load_settings({"IMAGINEER_BEAT_LOCK_TIMEOUT": "30"}))
    assert conf["beat_scheduler"] == "redbeat.RedBeatScheduler"
    assert (conf["redbeat_lock_timeout"], conf["beat_max_loop_interval"]) == (30, 6)
    assert conf["redbeat_redis_url"] == conf["broker_url"] and conf["redbeat_redis_options"] == {}
    assert "beat_schedule_filename" not in conf


def test_redbeat_reaches_sentinel_and_tls_like_the_broker(tmp_path):
    conf = redbeat_config(load_settings({
        "CELERY_BROKER_URL": "sentinel://:pw@s1:26380/2;sentinel://:pw@s2",
        "IMAGINEER_REDIS_SENTINEL_MASTER": "mymaster"}))
    assert conf["redbeat_redis_url"] == "redis-sentinel://s1:26380"
    assert conf["redbeat_redis_options"] == {"sentinels": [("s1", 26380), ("s2", 26379)],
                                             "service_name": "mymaster", "password": "pw", "db": 2}
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    tls = redbeat_config(load_settings({"CELERY_BROKER_URL": "rediss://r:6380/0", "IMAGINEER_REDIS_CA_CERT": str(ca)}))
    assert tls["redbeat_redis_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca)}


def test_redeliveries_are_capped_and_deduplicated_and_soft_shutdown_is_off():
    conf = celery_config(load_settings({}))
    assert conf["worker_deduplicate_successful_tasks"] is True
    assert conf["worker_soft_shutdown_timeout"] == 0.0
    assert conf["worker_consumer"] == "imagineer_worker.deadletter:Consumer"
    assert all(task.Strategy == "imagineer_worker.redelivery:capped_strategy"
               for name, task in celery.tasks.items() if not name.startswith("celery."))


@pytest.mark.parametrize(("task", "queue"), [
    ("imagineer.training.train_lora", "training"),
    ("imagineer.scraping.scrape_dataset", "scraping"),
    ("imagineer.labeling.label_dataset", "labeling"),
    ("imagineer.labeling.label_batch", "labeling"),
    ("imagineer.maintenance.record_disk_usage", "default"),
    ("imagineer.maintenance.purge_stale_training", "default"),
])
def test_each_task_routes_to_its_queue(task, queue):
    assert task in celery.tasks, f"{task} is not registered"
    assert celery.amqp.router.route({}, task)["queue"].name == queue


@pytest.mark.parametrize(("queues", "env", "modules"), [
    ("default", {}, ["maintenance"]),
    (["default", "labeling"], {}, ["maintenance", "labeling"]),
    ("scraping,training", {}, ["scraping", "training"]),
    ("labeling", {"IMAGINEER_MAINTENANCE_QUEUE": "labeling"}, ["maintenance", "labeling"]),
    (None, {}, ["maintenance", "scraping", "labeling", "training"]),  # no -Q
    ("default,other", {}, ["maintenance", "scraping", "labeling", "training"]),  # a queue no route names
    ("default", {"IMAGINEER_MAINTENANCE_QUEUE": "labeling"}, ["maintenance", "scraping", "labeling", "training"]),
])
def test_a_worker_imports_the_task_modules_routed_to_its_queues(queues, env, modules):
    assert task_modules(load_settings(env), queues) == [f"imagineer_worker.tasks.{m}" for m in modules]


def test_maintenance_follows_the_configured_queue():
    routes = task_routes(load_settings({"IMAGINEER_MAINTENANCE_QUEUE": "labeling"}))
    assert routes["imagineer.maintenance.*"] == {"queue": "labeling"}


def test_default_beat_schedule():
    schedule = beat_schedule(load_settings({}))
    assert set(schedule) == {"record-disk-usage", "purge-stale-training", "purge-stale-scrapes"}
    assert schedule["record-disk-usage"]["schedule"] == crontab(minute=0, hour="*/6")
    assert schedule["record-disk-usage"]["schedule"].hour == {0, 6, 12, 18}
    assert schedule["purge-stale-training"]["schedule"] == crontab(minute=0, hour=3)
    assert schedule["purge-stale-scrapes"]["schedule"] == crontab(minute=0, hour=4)
    for entry in schedule.values():
        assert entry["options"]["queue"] == "default"
        assert entry["task"] in celery.tasks


def test_overridden_beat_schedule():
    schedule = beat_schedule(load_settings({
        "IMAGINEER_DISK_SAMPLE_HOURS": "8", "IMAGINEER_PURGE_TRAINING_HOUR": "1",
        "IMAGINEER_PURGE_SCRAPE_HOUR": "2", "IMAGINEER_MAINTENANCE_QUEUE": "labeling"}))
    assert schedule["record-disk-usage"]["schedule"].hour == {0, 8, 16}
    assert schedule["purge-stale-training"]["schedule"].hour == {1}
    assert schedule["purge-stale-scrapes"]["schedule"].hour == {2}
    assert {e["options"]["queue"] for e in schedule.values()} == {"labeling"}


def test_a_minute_interval_overrides_the_hours_for_tests():
    schedule = beat_schedule(load_settings({"IMAGINEER_DISK_SAMPLE_MINUTES": "1"}))
    entry = schedule["record-disk-usage"]
    assert entry["schedule"] == crontab(minute="*/1")
    assert entry["options"]["expires"] == 60


def test_the_guides_app_path_is_the_same_app():
    from server.celery_app import celery as guide_app

    assert guide_app is celery


def test_light_workers_never_import_torch():
    code = ("import sys, imagineer_worker.celery_app as a; a.celery.loader.import_default_modules(); "
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
