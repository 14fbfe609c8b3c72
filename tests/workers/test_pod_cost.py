"""pod-deletion-cost: finding the pod from its environment, PATCHing the annotation against a
strict emulator of the Kubernetes API, and a worker keeping it equal to the sessions it holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.emulators.kube_api import KubeApiEmulator
from tests.emulators.watermark import WatermarkEmulator, watermark_pcm
from tests.support import create, publish, wait_finished
from voxq.aio import within
from voxq.keys import Keys
from voxq.redis_conn import connect
from voxq.settings import Settings
from workers.pod_cost import (
    ANNOTATION,
    PodCostError,
    PodRef,
    keep_cost_current,
    patch_body,
    pod_from_env,
    set_cost,
)
from workers.transcriber import Transcriber

TOKEN = "sa-token-1"


def sa_dir(tmp_path: Path, namespace: str | None = "voxq", ca: bool = True) -> Path:
    d = tmp_path / "serviceaccount"
    d.mkdir()
    (d / "token").write_text(TOKEN + "\n")
    if namespace:
        (d / "namespace").write_text(namespace)
    if ca:
        (d / "ca.crt").write_text("not parsed here\n")
    return d


def pod_ref(emu: KubeApiEmulator, tmp_path: Path, name: str = "worker-0") -> PodRef:
    token = tmp_path / f"token-{name}"
    token.write_text(emu.token)
    return PodRef(emu.url, emu.namespace, name, token, None)


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


# --- finding the pod ------------------------------------------------------------------------

def test_pod_from_env_inside_a_pod(tmp_path: Path) -> None:
    d = sa_dir(tmp_path)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "6443",
           "POD_NAME": "voxq-worker-abc", "POD_NAMESPACE": "calls"}
    pod = pod_from_env(env, d)
    assert pod == PodRef("https://10.96.0.1:6443", "calls", "voxq-worker-abc", d / "token",
                         d / "ca.crt")
    assert pod.url == "https://10.96.0.1:6443/api/v1/namespaces/calls/pods/voxq-worker-abc"


def test_pod_from_env_falls_back_to_the_mounted_namespace_and_brackets_ipv6(tmp_path: Path
                                                                           ) -> None:
    d = sa_dir(tmp_path, ca=False)
    pod = pod_from_env({"KUBERNETES_SERVICE_HOST": "fd00::1", "POD_NAME": "w"}, d)
    assert pod is not None
    assert pod.api == "https://[fd00::1]:443" and pod.namespace == "voxq" and pod.ca_file is None


@pytest.mark.parametrize("drop", ["KUBERNETES_SERVICE_HOST", "POD_NAME", "token", "namespace"])
def test_pod_from_env_is_none_outside_kubernetes(tmp_path: Path, drop: str) -> None:
    d = sa_dir(tmp_path, namespace=None if drop == "namespace" else "voxq")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "POD_NAME": "w"}
    env.pop(drop, None)
    if drop == "token":
        (d / "token").unlink()
    assert pod_from_env(env, d) is None


# --- the PATCH ------------------------------------------------------------------------------

def test_patch_body_is_a_string_annotation() -> None:
    assert patch_body(12) == {"metadata": {"annotations": {ANNOTATION: "12"}}}


async def test_set_cost_patches_the_annotation(tmp_path: Path) -> None:
    with KubeApiEmulator("voxq", ["worker-0"], TOKEN) as emu:
        async with httpx.AsyncClient() as c:
            await set_cost(c, pod_ref(emu, tmp_path), 7)
    assert emu.annotations["worker-0"] == {ANNOTATION: "7"}


@pytest.mark.parametrize(("change", "message"), [
    ("token", "401: Unauthorized"),
    ("namespace", "403: pods \"worker-0\" is forbidden"),
    ("name", "404: pods \"worker-9\" not found"),
])
async def test_set_cost_refusals_carry_the_api_message(tmp_path: Path, change: str,
                                                       message: str) -> None:
    with KubeApiEmulator("voxq", ["worker-0"], TOKEN) as emu:
        pod = pod_ref(emu, tmp_path)
        if change == "token":
            pod.token_file.write_text("someone-else")
        elif change == "namespace":
            pod = PodRef(pod.api, "kube-system", pod.name, pod.token_file, None)
        else:
            pod = PodRef(pod.api, pod.namespace, "worker-9", pod.token_file, None)
        async with httpx.AsyncClient() as c:
            with pytest.raises(PodCostError, match=message):
                await set_cost(c, pod, 1)
        assert emu.annotations["worker-0"] == {}


async def test_set_cost_unreachable_api(tmp_path: Path) -> None:
    with KubeApiEmulator("voxq", ["worker-0"], TOKEN) as emu:
        pod = pod_ref(emu, tmp_path)
    async with httpx.AsyncClient() as c:  # the emulator has stopped listening
        with pytest.raises(PodCostError, match="unreachable"):
            await set_cost(c, pod, 1)


async def test_keep_cost_current_retries_skips_repeats_and_rereads_a_rotated_token(
        tmp_path: Path) -> None:
    count = 3
    with KubeApiEmulator("voxq", ["worker-0"], TOKEN) as emu:
        pod = pod_ref(emu, tmp_path)
        emu.fail_next = 2  # the API server hiccups: retried at the next interval
        task = asyncio.create_task(keep_cost_current(pod, lambda: count, interval=0.02))
        try:
            await until(lambda: emu.annotations["worker-0"].get(ANNOTATION) == "3")
            await asyncio.sleep(0.2)
            assert len(emu.patches) == 1  # unchanged counts are not sent again
            emu.token = "sa-token-2"
            pod.token_file.write_text("sa-token-2")  # the kubelet rotated the projected token
            count = 0
            await until(lambda: emu.annotations["worker-0"].get(ANNOTATION) == "0")
            assert emu.history["worker-0"] == ["3", "0"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# --- the worker -----------------------------------------------------------------------------

async def test_worker_keeps_its_pod_deletion_cost_equal_to_its_sessions(settings: Settings,
                                                                       tmp_path: Path) -> None:
    """Two sessions held: cost 2; both finished: cost 0 (the pod a scale-down should pick)."""
    assert settings.redis_url
    keys = Keys(settings.prefix)
    with KubeApiEmulator("voxq", ["worker-0"], TOKEN) as kube, WatermarkEmulator() as emu:
        w = Transcriber(settings.model_copy(update={"voxqws_url": emu.url}), settings.redis_url,
                        name="costly")
        w.pod = pod_ref(kube, tmp_path)
        w.pod_cost_interval = 0.05
        stop = asyncio.Event()
        task = asyncio.create_task(w.run(stop))
        r = connect(settings.redis_url)
        try:
            await until(lambda: kube.annotations["worker-0"].get(ANNOTATION) == "0")
            for sid in ("pc1", "pc2"):
                await create(r, keys, sid, vendor="voxq-ws")
                await publish(r, keys, sid, watermark_pcm(5), eos=False)
            await until(lambda: kube.annotations["worker-0"].get(ANNOTATION) == "2")
            for sid in ("pc1", "pc2"):
                await publish(r, keys, sid, watermark_pcm(5), start_seq=5)
                await wait_finished(r, keys, sid)
            await until(lambda: kube.annotations["worker-0"].get(ANNOTATION) == "0")
            assert kube.history["worker-0"][0] == "0" and "2" in kube.history["worker-0"]
        finally:
            stop.set()
            await within(task, 30)
            await r.aclose()
