"""A credential given in values appears in ``kind: Secret`` objects only.

For each place values take a credential (the broker URL, the result backend URL, Flower's basic-auth
password) and each rendering (defaults, values-staging.yaml, values-prod.yaml), a unique marker is
set as the password; the whole text of every other object (annotations, ConfigMaps, args, env,
comments) must not contain it, plain or base64-encoded. The install notes (NOTES.txt) are checked
by helm-unittest (charts/imagineer-workers/tests/notes_test.yaml), since ``helm template`` omits them.
"""

from __future__ import annotations

import base64
import secrets

import pytest
import yaml

from tests.chart.helm import render_manifest

FLOWER_ON = {"enabled": True, "basicAuth": {"username": "ops", "existingSecret": ""}}


def _credential_values(place: str, password: str) -> tuple[dict, list[str]]:
    """Values that carry ``password``, and the strings it appears in (to look for base64 forms too)."""
    url = f"redis://:{password}@redis.internal:6379/0"
    if place == "broker.url":
        # An existing Secret (prod) would make the chart ignore broker.url: use the chart's own.
        return {"broker": {"url": url, "existingSecret": ""}}, [url, password]
    if place == "broker.resultBackendUrl":
        return {"broker": {"url": "redis://redis.internal:6379/0", "resultBackendUrl": url, "existingSecret": ""}}, \
            [url, password]
    if place == "broker.url+sentinel":
        url = f"sentinel://:{password}@sentinel-0:26379;sentinel://:{password}@sentinel-1:26379/0"
        return {"broker": {"url": url, "existingSecret": "", "sentinelMaster": "mymaster"}}, [url, password]
    if place == "flower.basicAuth.password":
        return {"flower": {**FLOWER_ON, "basicAuth": {**FLOWER_ON["basicAuth"], "password": password}}}, \
            [f"ops:{password}", password]
    raise ValueError(place)


PLACES = ["broker.url", "broker.resultBackendUrl", "broker.url+sentinel", "flower.basicAuth.password"]


def _documents(manifest: str) -> list[tuple[dict, str]]:
    """Each rendered object with its own raw text (``# Source:`` comment included)."""
    docs = []
    for text in manifest.split("\n---"):
        obj = yaml.safe_load(text)
        if obj:
            docs.append((obj, text))
    return docs


@pytest.mark.parametrize("values_file", ["default", "staging", "prod"])
@pytest.mark.parametrize("place", PLACES)
def test_a_password_in_values_appears_only_in_secrets(place, values_file):
    password = f"pw-{secrets.token_hex(12)}"
    values, carriers = _credential_values(place, password)
    manifest = render_manifest(values, values_file=None if values_file == "default" else values_file)
    encoded = {base64.b64encode(s.encode()).decode() for s in carriers}
    in_secrets, leaks = 0, []
    for obj, text in _documents(manifest):
        found = password in text or any(e in text for e in encoded)
        if obj["kind"] == "Secret":
            in_secrets += found
        elif found:
            leaks.append(f"{obj['kind']}/{obj['metadata']['name']}")
    assert not leaks, f"{place}: the password appears outside Secrets, in {leaks}"
    assert in_secrets, f"{place}: the password reached no Secret (the rendering did not use the value?)"
