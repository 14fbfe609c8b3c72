"""Helpers for the offline checks of the Kubernetes manifests and the Dockerfile: rendering the
kustomize overlays with kubectl, and the environment names voxq.settings.Settings reads."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices, SecretStr

from voxq.settings import Settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("dev", "prod")
SECRETS_TEMPLATE = K8S / "base" / "secrets.template.yaml"
SETTINGS_ENV = K8S / "base" / "settings.env"

Doc = dict[str, Any]


def kubectl() -> str:
    """The kubectl binary ($VOXQ_KUBECTL, else PATH); a clear failure when there is none."""
    found = os.environ.get("VOXQ_KUBECTL") or shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl is not installed: the k8s manifests cannot be rendered. Install it "
                    "(Debian: apt-get install kubernetes-client; .ci/run does) or point "
                    "VOXQ_KUBECTL at one.", pytrace=False)
    return found


@functools.cache
def render(path: str) -> tuple[Doc, ...]:
    """`kubectl kustomize k8s/<path>` as a tuple of documents."""
    proc = subprocess.run([kubectl(), "kustomize", str(K8S / path)], capture_output=True,
                          text=True, timeout=120, check=False)
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize k8s/{path} failed:\n{proc.stderr}", pytrace=False)
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def of_kind(docs: tuple[Doc, ...], *kinds: str) -> list[Doc]:
    return [d for d in docs if d["kind"] in kinds]


def one(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(docs: tuple[Doc, ...]) -> list[Doc]:
    return of_kind(docs, "Deployment", "StatefulSet")


def containers(docs: tuple[Doc, ...]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, container) for every container of every workload."""
    for w in workloads(docs):
        for c in w["spec"]["template"]["spec"]["containers"]:
            yield w, c


def role(container: Doc) -> str | None:
    """The voxq role a container runs (its first argument), None for a non-voxq container."""
    args = container.get("args") or []
    return args[0] if container.get("image", "").split("/")[-1].startswith("voxq") and args else None


def voxq_container(docs: tuple[Doc, ...], wanted: str) -> tuple[Doc, Doc]:
    found = [(w, c) for w, c in containers(docs) if role(c) == wanted]
    assert len(found) == 1, f"expected one container running `voxq {wanted}`, found {len(found)}"
    return found[0]


def settings_configmap(docs: tuple[Doc, ...]) -> dict[str, str]:
    """Data of the generated voxq-settings ConfigMap (its name carries a hash suffix)."""
    found = [d for d in of_kind(docs, "ConfigMap")
             if re.fullmatch(r"voxq-settings(-[a-z0-9]+)?", d["metadata"]["name"])]
    assert len(found) == 1, "expected one voxq-settings ConfigMap"
    return dict(found[0].get("data") or {})


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name V` or `--name=V` in a container's args."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def matches(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions) selects these labels."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pod_labels(w: Doc) -> dict[str, str]:
    return dict(w["spec"]["template"]["metadata"].get("labels") or {})


# --- settings ------------------------------------------------------------------------------------

def env_names(field: str) -> tuple[str, ...]:
    """Every environment name Settings reads for a field (its aliases, or VOXQ_<FIELD>)."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(c) for c in alias.choices)
    if isinstance(alias, str):
        return (alias,)
    prefix = Settings.model_config.get("env_prefix", "")
    return (f"{prefix}{field}".upper(),)


def all_env_names() -> dict[str, str]:
    """Environment name -> field, for every name Settings reads."""
    return {name: field for field in Settings.model_fields for name in env_names(field)}


def secret_fields() -> set[str]:
    return {f for f, info in Settings.model_fields.items() if "SecretStr" in str(info.annotation)
            or info.annotation is SecretStr}


def template_secrets() -> dict[str, set[str]]:
    """Secret name -> the keys the template lists (commented out: it carries no values)."""
    out: dict[str, set[str]] = {}
    for part in re.split(r"^---$", SECRETS_TEMPLATE.read_text(), flags=re.M):
        doc = yaml.safe_load(part)
        if not doc:
            continue
        assert doc["kind"] == "Secret" and not doc.get("stringData") and not doc.get("data"), \
            "the secrets template must hold no values"
        keys = set(re.findall(r"^\s*#\s*([A-Za-z_][A-Za-z0-9_]*): \"\"\s*$", part, flags=re.M))
        out[doc["metadata"]["name"]] = keys
    return out
