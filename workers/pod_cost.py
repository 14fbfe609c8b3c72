"""Keeps this worker pod's ``controller.kubernetes.io/pod-deletion-cost`` equal to the number
of sessions it holds, so that a scale-down removes the emptiest pods first (fewest sessions to
hand off). Kubernetes' ReplicaSet controller deletes pods with the lowest cost first.

Only inside a pod: the Kubernetes API address comes from the environment every pod gets
(``KUBERNETES_SERVICE_HOST``/``PORT``), the pod's name and namespace from the downward API
(``POD_NAME``, ``POD_NAMESPACE``, k8s/base/worker.yaml), the token and CA from the mounted
service account (k8s/base/rbac.yaml grants ``patch`` on pods). Failures are logged and retried;
they never touch the sessions.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: least time between two updates: the count moves with every session, the API server need
#: not hear of each move (a scale-down decision a few seconds stale removes the same pods)
UPDATE_INTERVAL_S = 5.0
REQUEST_TIMEOUT_S = 5.0


class PodCostError(Exception):
    """The Kubernetes API refused or could not take the annotation."""


@dataclass(frozen=True)
class PodRef:
    """Where this pod's object lives in the Kubernetes API, and how to authenticate."""

    api: str                    # https://host:port
    namespace: str
    name: str
    token_file: Path
    ca_file: Path | None        # None: the API's certificate is not verified against a CA file

    @property
    def url(self) -> str:
        """The pod object's URL."""
        return f"{self.api}/api/v1/namespaces/{self.namespace}/pods/{self.name}"


def pod_from_env(env: Mapping[str, str], sa_dir: Path = SERVICE_ACCOUNT_DIR) -> PodRef | None:
    """This pod, or None outside Kubernetes (or without the downward API and a token)."""
    host = env.get("KUBERNETES_SERVICE_HOST")
    name = env.get("POD_NAME")
    token = sa_dir / "token"
    if not host or not name or not token.is_file():
        return None
    namespace = env.get("POD_NAMESPACE")
    if not namespace and (sa_dir / "namespace").is_file():
        namespace = (sa_dir / "namespace").read_text().strip()
    if not namespace:
        return None
    port = env.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    ca = sa_dir / "ca.crt"
    return PodRef(f"https://{host}:{port}", namespace, name, token, ca if ca.is_file() else None)


def patch_body(cost: int) -> dict[str, object]:
    """The JSON merge patch that sets the annotation."""
    return {"metadata": {"annotations": {ANNOTATION: str(cost)}}}


def make_client(pod: PodRef) -> httpx.AsyncClient:
    """An HTTP client for the API server: its CA when the pod has one."""
    verify: ssl.SSLContext | bool = True
    if pod.ca_file is not None:
        verify = ssl.create_default_context(cafile=str(pod.ca_file))
    return httpx.AsyncClient(verify=verify, timeout=REQUEST_TIMEOUT_S)


async def set_cost(client: httpx.AsyncClient, pod: PodRef, cost: int) -> None:
    """PATCH the annotation; PodCostError with the API's reason if it refuses."""
    token = pod.token_file.read_text().strip()  # projected tokens rotate: read each time
    try:
        resp = await client.patch(pod.url, json=patch_body(cost), headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/merge-patch+json",
            "Accept": "application/json"})
    except httpx.HTTPError as e:
        raise PodCostError(f"Kubernetes API unreachable: {e!r}") from e
    if resp.status_code >= 400:
        reason = resp.text[:300]
        try:
            reason = str(resp.json().get("message", reason))
        except ValueError:
            pass
        raise PodCostError(f"Kubernetes API answered {resp.status_code}: {reason}")


async def keep_cost_current(pod: PodRef, count: Callable[[], int],
                            interval: float = UPDATE_INTERVAL_S,
                            client: httpx.AsyncClient | None = None) -> None:
    """Every ``interval``: if ``count()`` changed since the last accepted update, PATCH it.
    Runs until cancelled; a failed update is logged (once per distinct reason) and retried."""
    own = client is None
    client = client or make_client(pod)
    sent: int | None = None
    last_error = ""
    try:
        while True:
            n = count()
            if n != sent:
                try:
                    await set_cost(client, pod, n)
                    sent, last_error = n, ""
                except PodCostError as e:
                    if str(e) != last_error:
                        log.warning("pod-deletion-cost not updated: %s", e)
                        last_error = str(e)
            await asyncio.sleep(interval)
    finally:
        if own:
            await client.aclose()
