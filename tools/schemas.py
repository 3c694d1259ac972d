"""Lay out offline JSON schemas for kubeconform (run by tools.mk with the .tools venv's Python).

k8s OUT VERSION...
    Copies kubernetes-validate's strict schemas (`v<VERSION>-local-strict/`, additionalProperties
    false already) to OUT/v<VERSION>-local-strict/. Their $refs are absolute
    ("/api/_definitions.json#/$defs/...") and every file carries an https://kubernetes.io/... $id,
    which kubeconform would try to fetch from the web; the $ids are dropped and the $refs made
    relative to the file, so kubeconform reads _definitions.json from the same folder.

crd OUT CRD.yaml...
    Writes OUT/<group>/<kind>_<version>.json (lowercase kind; kubeconform's CRD layout) for each
    served version of each CustomResourceDefinition, made strict the way kubeconform's own
    openapi2jsonschema.py does it: additionalProperties false wherever properties are declared,
    unless the CRD already says otherwise or sets x-kubernetes-preserve-unknown-fields. OpenAPI's
    `nullable: true` becomes a "null" type, as the API server accepts null there.
"""

import importlib.util
import json
import pathlib
import shutil
import sys

import yaml

ABSOLUTE_DEFS = "/api/_definitions.json#"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 20x faster on the big CRDs


def _relative_refs(node, target):
    if isinstance(node, dict):
        return {
            k: (target + v[len(ABSOLUTE_DEFS):] if k == "$ref" and isinstance(v, str) and v.startswith(ABSOLUTE_DEFS)
                else _relative_refs(v, target))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_relative_refs(v, target) for v in node]
    return node


def k8s(out, versions):
    spec = importlib.util.find_spec("kubernetes_validate")  # finds the package without importing it
    src_root = pathlib.Path(spec.origin).parent / "kubernetes-json-schema"
    for version in versions:
        name = f"v{version.lstrip('v')}-local-strict"
        src, dst = src_root / name, pathlib.Path(out) / name
        if not src.is_dir():
            have = sorted(p.name for p in src_root.glob("*-local-strict"))
            sys.exit(f"kubernetes-validate ships no {name}; it has {', '.join(have)}")
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        for f in src.glob("*.json"):
            doc = json.loads(f.read_text())
            doc.pop("$id", None)
            target = "#" if f.name == "_definitions.json" else "_definitions.json#"
            (dst / f.name).write_text(json.dumps(_relative_refs(doc, target)))
        print(f"{dst}: {len(list(dst.glob('*.json')))} schemas")


def _strict(node):
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _strict(v) for k, v in node.items()}
    if node.pop("nullable", False) and "type" in node:
        node["type"] = [node["type"], "null"]
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        node["additionalProperties"] = False
    return node


def crd(out, files):
    for path in files:
        for doc in yaml.load_all(pathlib.Path(path).read_text(), Loader=LOADER):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"].lower()
            for v in doc["spec"]["versions"]:
                schema = (v.get("schema") or {}).get("openAPIV3Schema")
                if not schema or not v.get("served", True):
                    continue
                dst = pathlib.Path(out) / group / f"{kind}_{v['name']}.json"
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_text(json.dumps(_strict(schema)))
                print(dst)


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] not in ("k8s", "crd"):
        sys.exit(__doc__)
    {"k8s": k8s, "crd": crd}[sys.argv[1]](sys.argv[2], sys.argv[3:])
