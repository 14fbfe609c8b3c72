"""The Kubernetes manifests (k8s/), checked offline: both overlays render with kubectl kustomize,
validate against the Kubernetes schemas (kubernetes-validate) and KEDA's (k8s/schemas), and agree
with the code: environment names with voxq.settings, Redis keys with voxq.keys and RQ, probe paths
with the API's routes and the worker's health server, ports with the settings, selectors with
pod labels, grace periods with the drain and job timeouts.

kubectl is required (a missing one fails with a message; .ci/run installs it)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml
from rq import Queue
from rq.registry import StartedJobRegistry

from tests.k8s.k8s_support import (
    K8S,
    OVERLAYS,
    REPO,
    SECRETS_TEMPLATE,
    SETTINGS_ENV,
    Doc,
    all_env_names,
    containers,
    env_names,
    flag,
    matches,
    of_kind,
    one,
    pod_labels,
    render,
    role,
    secret_fields,
    settings_configmap,
    template_secrets,
    voxq_container,
    workloads,
)
from tests.support import stop_process
from voxq.embedded_redis import find_redis_server, free_port
from voxq.keys import TRANSCRIBERS_GROUP, Keys
from voxq.settings import Settings

# Kubernetes versions the manifests must be valid for: the oldest still in wide use, the newest
# kubernetes-validate knows.
K8S_VERSIONS = ("1.28", kubernetes_validate.latest_version())
KEDA_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): K8S / "schemas" / "keda-scaledobject-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): K8S / "schemas" / "keda-triggerauthentication-v1alpha1.json",
}
# Environment variables the manifests set that are not voxq settings, and why.
NOT_SETTINGS = {
    "POD_NAME": "downward API, for the worker's pod-deletion-cost updater (rbac.yaml)",
    "POD_NAMESPACE": "downward API, for the worker's pod-deletion-cost updater (rbac.yaml)",
}
# Values in k8s/base/settings.env that deliberately differ from the code's defaults.
BASE_OVERRIDES = {
    "VOXQ_API_HOST": "0.0.0.0",  # the default 127.0.0.1 is unreachable from outside the pod
    "VOXQ_INGEST_HOST": "0.0.0.0",  # the same for the ingest gateway
    "VOXQ_WORKER_HEALTH_PORT": "8081",  # unset = no health server: the probes need one
    "VOXQ_TTS_METRICS_PORT": "9102",  # unset = no /metrics: Prometheus scrapes the TTS worker
    "VOXQ_API_METRICS_PORT": "9100",  # unset = /metrics only behind a key on the API port
}
UVICORN_GRACEFUL_SHUTDOWN_S = 5  # api/cli.py: uvicorn.Config(timeout_graceful_shutdown=5)


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def docs(overlay: str) -> tuple[Doc, ...]:
    return render(f"overlays/{overlay}")


@pytest.fixture(scope="module")
def config(docs: tuple[Doc, ...]) -> dict[str, str]:
    return settings_configmap(docs)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No voxq setting from the test process's own environment leaks into a Settings()."""
    for name in all_env_names():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings(_env_file=None)  # type: ignore[call-arg]


# --- rendering and schemas -----------------------------------------------------------------------

def test_overlays_render_unique_objects(docs: tuple[Doc, ...]) -> None:
    ids = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(ids) == len(set(ids)), "duplicate objects"
    assert all(d["metadata"].get("namespace") == "voxq" for d in docs if d["kind"] != "Namespace")
    assert {"Deployment", "ScaledObject", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "NetworkPolicy", "ServiceAccount", "Role", "RoleBinding", "ConfigMap",
            "Namespace", "Service"} <= {d["kind"] for d in docs}


def test_base_parts_render() -> None:
    assert of_kind(render("base"), "Deployment")
    assert of_kind(render("base/redis"), "StatefulSet")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_objects_validate_against_kubernetes_schemas(docs: tuple[Doc, ...],
                                                              version: str) -> None:
    builtin = [d for d in docs if (d["apiVersion"], d["kind"]) not in KEDA_SCHEMAS]
    assert builtin
    for d in builtin:
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{d['kind']} {d['apiVersion']}: no Kubernetes {version} schema, and "
                        f"none in k8s/schemas: every object must be validated")
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{d['kind']}/{d['metadata']['name']} invalid for Kubernetes {version}: "
                        f"{e.message} at {'/'.join(map(str, e.absolute_path))}")


def test_keda_objects_validate_against_the_schemas_kept_in_the_repo(docs: tuple[Doc, ...]) -> None:
    keda = [d for d in docs if (d["apiVersion"], d["kind"]) in KEDA_SCHEMAS]
    assert of_kind(docs, "ScaledObject")
    for d in keda:
        schema = json.loads(KEDA_SCHEMAS[d["apiVersion"], d["kind"]].read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(d), key=str)
        assert not errors, f"{d['kind']}/{d['metadata']['name']}: " + "; ".join(
            f"{e.message} at {'/'.join(map(str, e.absolute_path))}" for e in errors)
        if d["kind"] == "ScaledObject":  # the CRD's own cross-field rule
            spec = d["spec"]
            assert spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)


def test_keda_schema_rejects_what_keda_would() -> None:
    """The repo's KEDA schema is strict where it matters (it is not an accept-all)."""
    schema = json.loads(KEDA_SCHEMAS["keda.sh/v1alpha1", "ScaledObject"].read_text())
    good = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
            "spec": {"scaleTargetRef": {"name": "d"}, "triggers": [
                {"type": "redis-streams", "metadata": {"address": "r:6379", "stream": "s",
                                                       "streamLength": "5"}}]}}
    jsonschema.validate(good, schema)
    bad_key = json.loads(json.dumps(good))
    bad_key["spec"]["triggers"][0]["metadata"]["streamLenght"] = "5"
    no_stream = json.loads(json.dumps(good))
    del no_stream["spec"]["triggers"][0]["metadata"]["stream"]
    unknown_field = json.loads(json.dumps(good))
    unknown_field["spec"]["minReplicas"] = 1
    for bad in (bad_key, no_stream, unknown_field):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_secret_template_is_valid_and_holds_no_values() -> None:
    secrets = template_secrets()  # asserts no stringData/data
    assert set(secrets) == {"voxq-vendor-credentials", "voxq-api", "voxq-redis", "voxq-ingest"}
    for d in yaml.safe_load_all(SECRETS_TEMPLATE.read_text()):
        filled = {**d, "stringData": {k: "x" for k in secrets[d["metadata"]["name"]]}}
        kubernetes_validate.validate(filled, K8S_VERSIONS[-1], strict=True)


# --- settings and environment --------------------------------------------------------------------

def test_settings_env_lists_every_setting_with_its_default(clean_env: pytest.MonkeyPatch) -> None:
    text = SETTINGS_ENV.read_text()
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, flags=re.M))
    unset = set(re.findall(r"^# unset: ([A-Z][A-Z0-9_]*) ", text, flags=re.M))
    in_template = set().union(*template_secrets().values())
    names = all_env_names()
    for name in [*values, *unset]:
        assert name in names, f"settings.env names {name}, which voxq.settings does not read"
    assert not set(values) & unset
    for field in Settings.model_fields:
        covered = set(env_names(field)) & (set(values) | unset | in_template)
        assert covered, f"setting {field} ({env_names(field)[0]}) is in neither settings.env " \
                        f"nor the secrets template"
        assert len(covered) == 1, f"setting {field} is given twice: {covered}"
    for field in secret_fields():
        assert not set(env_names(field)) & (set(values) | unset), \
            f"secret {field} must come from a Secret, not the ConfigMap"
    settings = settings_from(values, clean_env)
    for name, value in values.items():
        field = names[name]
        default = Settings.model_fields[field].default
        if name in BASE_OVERRIDES:
            assert value == BASE_OVERRIDES[name]
            assert getattr(settings, field) != default
        else:
            assert getattr(settings, field) == default, \
                f"{name}={value} differs from the code's default {default!r}"
    for name in unset:
        assert Settings.model_fields[names[name]].default is None, f"{name} has a default"


def test_every_env_var_the_manifests_set_is_read_by_the_code(docs: tuple[Doc, ...],
                                                             config: dict[str, str]) -> None:
    names = all_env_names()
    templates = template_secrets()
    for w, c in containers(docs):
        if role(c) is None:
            assert not c.get("env") and not c.get("envFrom"), "only voxq containers get env"
            continue
        set_here: set[str] = {e["name"] for e in c.get("env") or []}
        for src in c.get("envFrom") or []:
            assert not src.get("prefix")
            if "configMapRef" in src:
                set_here |= set(config)
            else:
                set_here |= templates[src["secretRef"]["name"]]
        for name in set_here:
            assert name in names or name in NOT_SETTINGS, \
                f"{w['metadata']['name']}: {name} is read by nothing in voxq.settings"


def test_overlay_settings_parse(docs: tuple[Doc, ...], config: dict[str, str], overlay: str,
                                clean_env: pytest.MonkeyPatch) -> None:
    settings = settings_from(config, clean_env)
    assert settings.worker_health_port is not None
    assert not set(config) & {n for f in secret_fields() for n in env_names(f)}
    if overlay == "dev":
        assert settings.redis_url, "dev sets REDIS_URL in the ConfigMap"
    else:
        assert "REDIS_URL" not in config, "prod takes REDIS_URL from the Secret voxq-redis"
        for w, c in containers(docs):
            refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c.get("env") or []
                    if "secretKeyRef" in e.get("valueFrom", {})}
            assert refs.get("REDIS_URL") == {"name": "voxq-redis", "key": "REDIS_URL"}, \
                w["metadata"]["name"]


def test_references_to_configmaps_secrets_and_accounts_exist(docs: tuple[Doc, ...],
                                                             overlay: str) -> None:
    templates = template_secrets()
    configmaps = {d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")}
    accounts = {d["metadata"]["name"] for d in of_kind(docs, "ServiceAccount")}
    for w in workloads(docs):
        spec = w["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] in accounts
        for v in spec.get("volumes") or []:
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps
        for c in spec["containers"]:
            for src in c.get("envFrom") or []:
                if "configMapRef" in src:
                    assert src["configMapRef"]["name"] in configmaps
                else:
                    ref = src["secretRef"]
                    assert ref["name"] in templates, f"Secret {ref['name']} is not in the template"
                    # dev runs without any Secret; prod requires the ones it names
                    assert ref.get("optional", False) is (overlay == "dev"), ref
            for e in c.get("env") or []:
                key_ref = e.get("valueFrom", {}).get("secretKeyRef")
                if key_ref:
                    assert key_ref["key"] in templates[key_ref["name"]]
    for ta in of_kind(docs, "TriggerAuthentication"):
        for ref in ta["spec"].get("secretTargetRef", []):
            assert ref["key"] in templates[ref["name"]], ref


# --- KEDA triggers and the Redis keys the code writes --------------------------------------------

def triggers(so: Doc) -> dict[str, Doc]:
    return {t["name"]: t for t in so["spec"]["triggers"]}


def test_transcriber_scales_on_the_control_stream_the_code_writes(
        docs: tuple[Doc, ...], config: dict[str, str], clean_env: pytest.MonkeyPatch) -> None:
    settings = settings_from(config, clean_env)
    keys = Keys(settings.prefix)
    so = one(docs, "ScaledObject", "voxq-worker")
    assert so["spec"]["scaleTargetRef"]["name"] == "voxq-worker"
    (trigger,) = so["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] in {"redis-streams", "redis-cluster-streams"}
    assert meta["stream"] == keys.sessions
    # XLEN mode (no consumerGroup): unclaimed + claimed-and-unfinished sessions, because the
    # worker XACKs *and* XDELs a session's control entry when the session is done
    # (tests/workers/test_transcriber.py asserts XLEN 0 after a finished session).
    assert "consumerGroup" not in meta and "lagCount" not in meta
    target = int(meta["streamLength"])
    assert 1 <= target < settings.max_sessions, "the target must leave each pod some headroom"
    assert so["spec"]["minReplicaCount"] >= 1


def test_transcriber_group_name_matches_the_code() -> None:
    assert TRANSCRIBERS_GROUP == "transcribers"  # named in the README, DESIGN.md and k8s/README


def test_tts_worker_scales_on_rq_queue_and_started_registry(
        docs: tuple[Doc, ...], config: dict[str, str], clean_env: pytest.MonkeyPatch) -> None:
    settings = settings_from(config, clean_env)
    conn = redis.Redis()  # never connected: only builds key names
    queue_key = Queue(settings.tts_queue, connection=conn).key
    wip_key = StartedJobRegistry(settings.tts_queue, connection=conn).key
    assert (queue_key, wip_key) == (f"rq:queue:{settings.tts_queue}", f"rq:wip:{settings.tts_queue}")
    so = one(docs, "ScaledObject", "voxq-tts-worker")
    t = triggers(so)
    assert {n: x["metadata"]["listName"] for n, x in t.items()} == {"queued": queue_key,
                                                                  "running": wip_key}
    assert all(x["type"] in {"redis", "redis-cluster"} for x in t.values())
    modifiers = so["spec"]["advanced"]["scalingModifiers"]
    assert set(re.findall(r"[A-Za-z_]\w*", modifiers["formula"])) == set(t)
    assert modifiers["formula"].replace(" ", "") == "queued+running"
    # never zero: RQ's scheduler (retries after a backoff) runs inside a worker
    assert so["spec"]["minReplicaCount"] >= 1


def test_every_redis_key_a_trigger_names_is_one_the_code_writes(
        docs: tuple[Doc, ...], config: dict[str, str], clean_env: pytest.MonkeyPatch) -> None:
    settings = settings_from(config, clean_env)
    keys = Keys(settings.prefix)
    conn = redis.Redis()
    known = {keys.sessions, keys.live, keys.index,
             Queue(settings.tts_queue, connection=conn).key,
             StartedJobRegistry(settings.tts_queue, connection=conn).key}
    for so in of_kind(docs, "ScaledObject"):
        for t in so["spec"]["triggers"]:
            for field in ("stream", "listName"):
                if field in t["metadata"]:
                    assert t["metadata"][field] in known, t
            if "consumerGroup" in t["metadata"]:
                assert t["metadata"]["consumerGroup"] == TRANSCRIBERS_GROUP


def test_triggers_reach_the_redis_the_pods_use(docs: tuple[Doc, ...], overlay: str,
                                               config: dict[str, str]) -> None:
    auths = {d["metadata"]["name"] for d in of_kind(docs, "TriggerAuthentication")}
    for so in of_kind(docs, "ScaledObject"):
        for t in so["spec"]["triggers"]:
            if overlay == "dev":
                # the in-cluster Service, by the name KEDA's operator (another namespace) resolves
                url = urlsplit(config["REDIS_URL"])
                svc = one(docs, "Service", str(url.hostname))
                port = url.port or 6379
                assert t["metadata"]["address"] == \
                    f"{svc['metadata']['name']}.voxq.svc.cluster.local:{port}"
                assert port in {p["port"] for p in svc["spec"]["ports"]}
            elif so["metadata"]["name"] == "voxq-tts-worker":
                # RQ's keys live on the single Redis of VOXQ_RQ_REDIS_URL, not on the cluster
                assert t["type"] == "redis"
                assert t["authenticationRef"]["name"] == "voxq-rq-redis" in auths
                assert not {"address", "addresses", "host", "password"} & set(t["metadata"])
            else:
                assert t["type"].startswith("redis-cluster")
                assert t["authenticationRef"]["name"] == "voxq-redis" in auths
                assert not {"address", "addresses", "host", "password"} & set(t["metadata"])


def test_prod_points_rq_at_its_own_redis_and_waits_for_replicas(
        docs: tuple[Doc, ...], overlay: str, config: dict[str, str],
        clean_env: pytest.MonkeyPatch) -> None:
    """With a cluster as REDIS_URL, the pods that touch RQ (API enqueues, TTS worker runs) get
    VOXQ_RQ_REDIS_URL from the Secret, and KEDA reads RQ's keys on that same Redis."""
    if overlay != "prod":
        pytest.skip("prod only")
    assert settings_from(config, clean_env).wait_replicas == 1
    for w, c in containers(docs):
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c.get("env") or []
                if "secretKeyRef" in e.get("valueFrom", {})}
        if role(c) in ("api", "tts-worker"):
            assert refs.get("VOXQ_RQ_REDIS_URL") == {"name": "voxq-redis",
                                                    "key": "VOXQ_RQ_REDIS_URL"}, w
        else:
            assert "VOXQ_RQ_REDIS_URL" not in refs, w["metadata"]["name"]
    ta = one(docs, "TriggerAuthentication", "voxq-rq-redis")
    assert {(r["parameter"], r["key"]) for r in ta["spec"]["secretTargetRef"]} == {
        ("address", "rq_address"), ("password", "rq_password"), ("tls", "rq_tls")}


# --- selectors, probes, ports --------------------------------------------------------------------

def test_selectors_match_pod_labels(docs: tuple[Doc, ...]) -> None:
    ws = workloads(docs)
    names = {w["metadata"]["name"] for w in ws}
    for w in ws:
        assert matches(w["spec"]["selector"], pod_labels(w)), w["metadata"]["name"]
        for tsc in w["spec"]["template"]["spec"].get("topologySpreadConstraints") or []:
            assert matches(tsc["labelSelector"], pod_labels(w))
    for svc in of_kind(docs, "Service"):
        selected = [w for w in ws if matches({"matchLabels": svc["spec"]["selector"]}, pod_labels(w))]
        assert len(selected) == 1, f"Service {svc['metadata']['name']} selects {len(selected)}"
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        selected = [w for w in ws if matches(pdb["spec"]["selector"], pod_labels(w))]
        assert len(selected) == 1, f"PDB {pdb['metadata']['name']} selects {len(selected)}"
    for np in of_kind(docs, "NetworkPolicy"):
        sel = np["spec"]["podSelector"]
        assert sel == {} or any(matches(sel, pod_labels(w)) for w in ws), np["metadata"]["name"]
        for rule in [*np["spec"].get("ingress", []), *np["spec"].get("egress", [])]:
            for peer in rule.get("from", []) + rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer and peer["podSelector"]:
                    # a peer in this namespace must be a pod that exists, except the in-cluster
                    # Redis, which only the dev overlay has
                    if any(matches(peer["podSelector"], pod_labels(w)) for w in ws):
                        continue
                    assert peer["podSelector"] == {"matchLabels": {
                        "app.kubernetes.io/name": "voxq-redis"}}, peer
    targets = [so["spec"]["scaleTargetRef"]["name"] for so in of_kind(docs, "ScaledObject")]
    targets += [h["spec"]["scaleTargetRef"]["name"] for h in of_kind(docs, "HorizontalPodAutoscaler")]
    assert len(targets) == len(set(targets)), "two autoscalers on one Deployment"
    assert set(targets) <= names
    for rb in of_kind(docs, "RoleBinding"):
        assert one(docs, rb["roleRef"]["kind"], rb["roleRef"]["name"])
        for s in rb["subjects"]:
            assert one(docs, s["kind"], s["name"])


def http_probes(c: Doc) -> list[Doc]:
    return [c[p]["httpGet"] for p in ("startupProbe", "livenessProbe", "readinessProbe")
            if p in c and "httpGet" in c[p]]


def container_port(c: Doc, port: int | str) -> int:
    if isinstance(port, int):
        assert port in {p["containerPort"] for p in c.get("ports", [])}
        return port
    (found,) = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
    return int(found)


async def test_api_probe_paths_are_routes_of_the_app(docs: tuple[Doc, ...]) -> None:
    import httpx

    from api.app import create_app

    _, c = voxq_container(docs, "api")
    probes = http_probes(c)
    assert {p["path"] for p in probes} == {"/healthz", "/readyz"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"  # never Redis
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Served by the real app (lifespan not started, so no Redis is needed: /readyz says 503
    # "not started", which proves the route exists); an unknown path answers 404.
    app = create_app(Settings(_env_file=None), "redis://127.0.0.1:1/0")  # type: ignore[call-arg]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api") as client:
        assert (await client.get("/healthz")).status_code == 200
        for p in probes:
            assert (await client.get(p["path"])).status_code != 404, p
        assert (await client.get("/no-such-probe")).status_code == 404


async def _get_status(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    line = await reader.readline()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return int(line.split()[1])


async def test_worker_probe_paths_are_served_by_its_health_server(docs: tuple[Doc, ...]) -> None:
    from workers.health_server import serve_health

    _, c = voxq_container(docs, "worker")
    probes = http_probes(c)
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"  # the event-loop heartbeat
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"  # false while draining
    server = await serve_health("127.0.0.1", 0, time.monotonic, lambda: True)
    try:
        port = server.sockets[0].getsockname()[1]
        for p in probes:
            assert await _get_status(port, p["path"]) == 200, p
        assert await _get_status(port, "/nonexistent") == 404  # the check can fail
    finally:
        server.close()
        await server.wait_closed()


async def test_ingest_probe_paths_are_served_by_the_gateway(docs: tuple[Doc, ...]) -> None:
    from producer.ingest.core import Gateway
    from producer.ingest.server import IngestServer

    w, c = voxq_container(docs, "ingest")
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"  # the process answers
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"  # 503 once draining
    assert w["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    gw = Gateway(Settings(_env_file=None), "redis://127.0.0.1:1/0", insecure=True)  # type: ignore[call-arg]
    srv = IngestServer(gw)
    server = await srv.start("127.0.0.1", 0)
    try:
        port = next(iter(server.sockets)).getsockname()[1]
        for p in [*http_probes(c), {"path": "/metrics"}]:
            assert await _get_status(port, p["path"]) == 200, p
        assert await _get_status(port, "/nonexistent") == 404  # the check can fail
        gw.draining.set()
        assert await _get_status(port, "/readyz") == 503
    finally:
        server.close()
        await server.wait_closed()


def test_tts_worker_has_no_http_probes(docs: tuple[Doc, ...]) -> None:
    _, c = voxq_container(docs, "tts-worker")
    assert not http_probes(c), "the TTS worker serves no HTTP; a probe could never pass"


def test_ports_match_the_settings(docs: tuple[Doc, ...], config: dict[str, str],
                                  clean_env: pytest.MonkeyPatch) -> None:
    settings = settings_from(config, clean_env)
    _, api = voxq_container(docs, "api")
    api_port = int(flag(api["args"], "--port") or settings.api_port)
    assert settings.api_host == "0.0.0.0" or flag(api["args"], "--host") == "0.0.0.0"
    for p in http_probes(api):
        assert container_port(api, p["port"]) == api_port
    w, worker = voxq_container(docs, "worker")
    health = int(flag(worker["args"], "--health-port") or settings.worker_health_port or 0)
    for p in http_probes(worker):
        assert container_port(worker, p["port"]) == health
    assert w["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(health)
    for svc in of_kind(docs, "Service"):
        (target,) = [x for x in workloads(docs)
                     if matches({"matchLabels": svc["spec"]["selector"]}, pod_labels(x))]
        c = target["spec"]["template"]["spec"]["containers"][0]
        for p in svc["spec"]["ports"]:
            got = container_port(c, p["targetPort"])
            if role(c) == "api":
                assert got == api_port
    np_ports = {n["metadata"]["name"]: {p["port"] for r in n["spec"].get("ingress", [])
                                        for p in r.get("ports", [])}
                for n in of_kind(docs, "NetworkPolicy")}
    metrics_port = settings.api_metrics_port
    assert metrics_port is not None and metrics_port != api_port
    assert container_port(api, metrics_port) == metrics_port
    a, _ = voxq_container(docs, "api")
    assert a["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == \
        str(metrics_port)
    assert np_ports["voxq-api"] == {api_port, metrics_port}
    g, ingest = voxq_container(docs, "ingest")
    ingest_port = int(flag(ingest["args"], "--port") or settings.ingest_port)
    assert settings.ingest_host == "0.0.0.0" or flag(ingest["args"], "--host") == "0.0.0.0"
    for p in http_probes(ingest):
        assert container_port(ingest, p["port"]) == ingest_port
    assert g["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(ingest_port)
    svc = one(docs, "Service", "voxq-ingest")
    assert {container_port(ingest, p["targetPort"]) for p in svc["spec"]["ports"]} == {ingest_port}
    assert np_ports["voxq-ingest"] == {ingest_port}
    assert np_ports["voxq-worker"] == {health}


# --- lifecycle, security, network ----------------------------------------------------------------

def test_grace_periods_cover_the_drain_and_the_longest_job(
        docs: tuple[Doc, ...], config: dict[str, str], clean_env: pytest.MonkeyPatch) -> None:
    s = settings_from(config, clean_env)
    w, worker = voxq_container(docs, "worker")
    grace = w["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert s.drain_grace_seconds + 10 <= grace <= s.drain_grace_seconds + 60
    assert "lifecycle" not in worker, "SIGTERM starts the drain; a preStop would only delay it"
    t, _ = voxq_container(docs, "tts-worker")
    longest_job = s.tts_job_timeout_base_seconds + s.tts_job_timeout_per_char_seconds * s.tts_max_text_chars
    assert t["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= longest_job + 10
    g, _ = voxq_container(docs, "ingest")
    # the drain (producer/ingest/server.py): the grace for calls, then up to 15 s to close
    assert g["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= \
        s.ingest_drain_grace_seconds + 15
    a, api = voxq_container(docs, "api")
    pre_stop = api["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert a["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > \
        int(pre_stop[1]) + UVICORN_GRACEFUL_SHUTDOWN_S


def test_rollouts_never_drop_capacity(docs: tuple[Doc, ...]) -> None:
    for d in of_kind(docs, "Deployment"):
        strategy = d["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate"
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0
        assert "replicas" not in d["spec"], "the autoscaler owns the replica count"


def test_pods_are_locked_down(docs: tuple[Doc, ...]) -> None:
    for w in workloads(docs):
        spec = w["spec"]["template"]["spec"]
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
        mounts_of = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in mounts_of[tmp[0]["name"]], "/tmp must be writable"
            assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
            assert c["resources"]["requests"]["cpu"]


def test_only_the_worker_gets_a_kubernetes_token_and_it_may_patch_pods(
        docs: tuple[Doc, ...]) -> None:
    w, worker = voxq_container(docs, "worker")
    sa = w["spec"]["template"]["spec"]["serviceAccountName"]
    bindings = [rb for rb in of_kind(docs, "RoleBinding")
                if any(s["kind"] == "ServiceAccount" and s["name"] == sa for s in rb["subjects"])]
    rules = [r for rb in bindings for r in one(docs, "Role", rb["roleRef"]["name"])["rules"]]
    assert any("pods" in r["resources"] and "patch" in r["verbs"] for r in rules)
    assert all(set(r["verbs"]) <= {"get", "patch"} for r in rules)
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
           for e in worker.get("env", [])}
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"
    for other in workloads(docs):
        if other is not w:
            assert other["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def egress_ports(np: Doc) -> set[int]:
    return {p["port"] for r in np["spec"].get("egress", []) for p in r.get("ports", [])}


def test_network_policies_allow_the_vendor_ports_the_code_uses(docs: tuple[Doc, ...]) -> None:
    from workers.vendors.aws.sigv4 import TRANSCRIBE_PORT

    assert one(docs, "NetworkPolicy", "voxq-default-deny")["spec"]["podSelector"] == {}
    worker = egress_ports(one(docs, "NetworkPolicy", "voxq-worker"))
    tts = egress_ports(one(docs, "NetworkPolicy", "voxq-tts-worker"))
    assert TRANSCRIBE_PORT in worker
    for field, info in Settings.model_fields.items():
        default = info.default
        if isinstance(default, str) and re.match(r"^(wss?|https?)://", default):
            url = urlsplit(default)
            port = url.port or (443 if url.scheme in ("wss", "https") else 80)
            assert port in worker and port in tts, f"{field}: {default} is blocked"
    clients = one(docs, "NetworkPolicy", "voxq-redis-clients")
    assert egress_ports(clients) == {6379}
    selected = [w["metadata"]["name"] for w in workloads(docs)
                if matches(clients["spec"]["podSelector"], pod_labels(w))]
    assert sorted(selected) == ["voxq-api", "voxq-ingest", "voxq-tts-worker", "voxq-worker"]


def test_dev_redis_persists_every_write_and_never_evicts(docs: tuple[Doc, ...],
                                                         overlay: str) -> None:
    if overlay == "prod":
        assert not of_kind(docs, "StatefulSet"), "prod uses an external Redis"
        peers = [p for r in one(docs, "NetworkPolicy", "voxq-redis-clients")["spec"]["egress"]
                 for p in r["to"]]
        assert all("ipBlock" in p and ipaddress.ip_network(p["ipBlock"]["cidr"]) for p in peers)
        return
    sts = one(docs, "StatefulSet", "voxq-redis")
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    conf_volume = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if "configMap" in v)
    conf = one(docs, "ConfigMap", conf_volume["configMap"]["name"])["data"]["redis.conf"]
    directives = dict(line.split(None, 1) for line in conf.splitlines()
                      if line.strip() and not line.startswith("#"))
    assert directives["appendonly"] == "yes" and directives["appendfsync"] == "always"
    assert directives["maxmemory-policy"] == "noeviction" and directives["dir"] == "/data"
    ingress = one(docs, "NetworkPolicy", "voxq-redis")["spec"]["ingress"]
    peers = [p for r in ingress for p in r["from"]]
    assert any(p.get("namespaceSelector", {}).get("matchLabels", {}).get(
        "kubernetes.io/metadata.name") == "keda" for p in peers), "KEDA must reach Redis"


def test_dev_redis_conf_is_accepted_by_redis_server(tmp_path: Path) -> None:
    """Start a real redis-server with the dev config (port and dir moved to the test's own)."""
    conf = (K8S / "base" / "redis" / "redis.conf").read_text()
    port = free_port()
    local = tmp_path / "redis.conf"
    local.write_text(re.sub(r"^(dir|port|bind) .*$", "", conf, flags=re.M)
                     + f"\ndir {tmp_path}\nport {port}\nbind 127.0.0.1\n")
    proc = subprocess.Popen([find_redis_server(), str(local)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        r = redis.Redis(port=port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    pytest.fail(f"redis-server rejected k8s/base/redis/redis.conf:\n{out}")
                time.sleep(0.05)
        got: dict[str, Any] = {k: r.config_get(k)[k] for k in
                               ("appendonly", "appendfsync", "maxmemory-policy", "save")}
        assert got == {"appendonly": "yes", "appendfsync": "always",
                       "maxmemory-policy": "noeviction", "save": ""}
        r.close()
    finally:
        stop_process(proc, 10)


def test_roles_are_voxq_commands(docs: tuple[Doc, ...]) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    commands = set(pyproject["project"]["entry-points"]["voxq.commands"])
    roles = {role(c) for _, c in containers(docs)} - {None}
    assert roles == {"api", "ingest", "worker", "tts-worker"} and roles <= commands
    for _, c in containers(docs):
        if role(c):
            assert "command" not in c, "the image's ENTRYPOINT is `voxq`; args pick the role"


def test_prod_image_is_a_release(docs: tuple[Doc, ...], overlay: str) -> None:
    images = {c["image"] for _, c in containers(docs) if role(c)}
    assert len(images) == 1
    (image,) = images
    tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
    if overlay == "prod":
        assert tag and tag not in {"latest", "dev"}, image


# --- dashboard -----------------------------------------------------------------------------------

def test_dashboard_uses_exactly_the_documented_metrics() -> None:
    dash = json.loads((K8S / "grafana" / "voxq.json").read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs
            for m in re.findall(r"\b(voxq_[a-z_]+)\b", e)}
    doc = (K8S / "grafana" / "METRICS.md").read_text()
    table = set(re.findall(r"^\| `(voxq_[a-z_]+)` \|", doc, flags=re.M))
    assert used == table, f"dashboard only: {used - table}; documented only: {table - used}"
    others = {m for e in exprs for m in re.findall(r"\b((?:keda|kube)_[a-z_]+)\b", e)}
    assert others <= set(re.findall(r"^\| `((?:keda|kube)_[a-z_]+)` \|", doc, flags=re.M))
    for name in table:
        kind = re.search(rf"^\| `{name}` \| (\w+) \|", doc, flags=re.M)
        assert kind and kind.group(1) in {"counter", "gauge", "histogram"}
        assert (kind.group(1) == "counter") == name.endswith("_total")
        if kind.group(1) == "histogram":
            assert name.endswith("_seconds") and any(f"{name}_bucket" in e for e in exprs)


def test_prod_admits_the_api_only_from_the_ingress_controller() -> None:
    """Prod: port 8000 only from the ingress controller's namespace; the metrics port stays
    open to Prometheus. Dev keeps the API open inside the cluster."""
    prod = one(render("overlays/prod"), "NetworkPolicy", "voxq-api")["spec"]["ingress"]
    api_rules = [r for r in prod if any(p["port"] == 8000 for p in r.get("ports", []))]
    assert api_rules and all(r.get("from") for r in api_rules)
    for rule in api_rules:
        for peer in rule["from"]:
            assert peer == {"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "ingress-nginx"}}}, peer
    dev = one(render("overlays/dev"), "NetworkPolicy", "voxq-api")["spec"]["ingress"]
    assert any(not r.get("from") and any(p["port"] == 8000 for p in r["ports"]) for r in dev)
