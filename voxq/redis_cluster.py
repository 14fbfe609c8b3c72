"""A real Redis Cluster on loopback: six redis-server child processes (three primaries, one
replica each), formed without redis-cli, for the tests and for trying voxq on a cluster.

The cluster is formed the way redis-cli does it, with plain commands through redis-py:
``CLUSTER SET-CONFIG-EPOCH`` on each fresh node, ``CLUSTER MEET``, slots in three equal ranges
(``ADDSLOTSRANGE`` on Redis 7, ``ADDSLOTS`` in batches on 6.2), ``CLUSTER REPLICATE``; it is
ready once every node reports ``cluster_state:ok``, agrees on the same three primaries and every
replica is in sync. Every node persists with ``appendonly yes`` / ``appendfsync always`` and keeps
its ``nodes.conf`` in its own directory, so a killed node restarted on its port rejoins (as a
replica of whichever node took its slots over).

Fault injection: :meth:`RedisClusterServer.failover` runs ``CLUSTER FAILOVER`` on a replica
(a coordinated switch: the replica catches up with its primary first), and
:meth:`RedisClusterServer.kill` SIGKILLs a node (its replica is promoted once the others have
not heard from it for ``node_timeout_ms`` and it wins the election).
"""

from __future__ import annotations

import contextlib
import random
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.crc import key_slot

from voxq.embedded_redis import RedisServer
from voxq.errors import RedisUnavailable

SLOTS = 16384
_ADDSLOTS_BATCH = 1000


def free_cluster_port(taken: set[int] | None = None, tries: int = 200) -> int:
    """A loopback port that is free, and whose cluster bus port (port + 10000) is free too;
    neither among ``taken`` (ports already handed out, with their bus ports)."""
    taken = taken if taken is not None else set()
    for _ in range(tries):
        port = random.randint(20000, 55000)
        pair = {port, port + 10000}
        if not pair & taken and all(_bindable(p) for p in pair):
            taken |= pair
            return port
    raise RedisUnavailable("no free port pair (port, port + 10000) for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def slot_of(key: str | bytes) -> int:
    """The hash slot of a key (its ``{tag}`` if it has one)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node as the cluster sees it now."""

    port: int
    node_id: str
    primary: bool
    primary_id: str | None  # the primary it replicates (replicas only)
    slots: tuple[tuple[int, int], ...]  # ranges it serves (primaries only)


class ClusterNode:
    """One redis-server process of the cluster (a RedisServer that can be killed and restarted)."""

    def __init__(self, index: int, base_dir: Path, node_timeout_ms: int,
                 extra_args: tuple[str, ...] = (), taken: set[int] | None = None):
        self.index = index
        self.port = free_cluster_port(taken)
        self.dir = base_dir / f"node{index}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.server = RedisServer(
            self.port, appendonly=True, data_dir=str(self.dir),
            extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", str(node_timeout_ms),
                        "--cluster-replica-validity-factor", "0",
                        "--cluster-require-full-coverage", "yes", *extra_args))

    @property
    def name(self) -> str:
        """host:port, as redis-py names cluster nodes."""
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        proc = self.server.proc
        return proc is not None and proc.poll() is None

    def client(self, timeout: float = 5.0, decode: bool = True) -> redis.Redis:
        """A plain (non-cluster) client on this node alone; the caller closes it."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout,
                           socket_connect_timeout=timeout, decode_responses=decode)

    def call(self, *args: Any, timeout: float = 5.0) -> Any:
        """Run one command on this node."""
        with contextlib.closing(self.client(timeout)) as c:
            return c.execute_command(*args)

    def __repr__(self) -> str:
        return f"<ClusterNode {self.index} :{self.port}{'' if self.alive else ' down'}>"


class RedisClusterServer:
    """Six redis-server processes on loopback formed into a cluster of 3 primaries + 3 replicas."""

    def __init__(self, primaries: int = 3, replicas_per_primary: int = 1, *,
                 node_timeout_ms: int = 1000, data_dir: str | None = None,
                 extra_args: tuple[str, ...] = ()):
        if primaries < 3:
            raise ValueError("a Redis Cluster needs at least 3 primaries to elect a new one")
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="voxq-cluster-")
        self.base_dir = Path(data_dir or (self._tmp.name if self._tmp else "."))
        self.node_timeout_ms = node_timeout_ms
        n = primaries * (1 + replicas_per_primary)
        taken: set[int] = set()
        self.nodes = [ClusterNode(i, self.base_dir, node_timeout_ms, extra_args, taken)
                      for i in range(n)]
        self.n_primaries = primaries
        self.replicas_per_primary = replicas_per_primary

    # --- addresses ----------------------------------------------------------------------------

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of every node, for a cluster client's startup nodes."""
        return [("127.0.0.1", n.port) for n in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL naming every node (voxq.redis_conn understands it)."""
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in self.startup_nodes) + "/"

    def node(self, port_or_name: int | str) -> ClusterNode:
        """The node on a port (or named host:port)."""
        port = int(str(port_or_name).rsplit(":", 1)[-1])
        for n in self.nodes:
            if n.port == port:
                return n
        raise KeyError(f"no cluster node on port {port}")

    # --- life ---------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> RedisClusterServer:
        """Start every process, form the cluster and wait until it is healthy."""
        try:
            for n in self.nodes:
                n.server.start()
            self._form()
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self) -> None:
        for i, n in enumerate(self.nodes):
            with contextlib.suppress(redis.ResponseError):  # already set: a reused directory
                n.call("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        first = self.nodes[0]
        for n in self.nodes[1:]:
            n.call("CLUSTER", "MEET", "127.0.0.1", first.port)
        self._wait(lambda: all(self._known(n) == len(self.nodes) for n in self.nodes), 20,
                   "nodes did not all meet")
        primaries = self.nodes[:self.n_primaries]
        per = SLOTS // self.n_primaries
        for i, p in enumerate(primaries):
            lo = i * per
            hi = SLOTS - 1 if i == self.n_primaries - 1 else (i + 1) * per - 1
            self._add_slots(p, lo, hi)
        ids = [self.node_id(p) for p in primaries]
        # every node must have learnt the primaries' slots before a replica attaches
        self._wait(lambda: all(self._assigned(n) == SLOTS for n in self.nodes), 20,
                   "slot assignment did not propagate")
        for j, n in enumerate(self.nodes[self.n_primaries:]):
            n.call("CLUSTER", "REPLICATE", ids[j % self.n_primaries])

    @staticmethod
    def _add_slots(node: ClusterNode, lo: int, hi: int) -> None:
        try:
            node.call("CLUSTER", "ADDSLOTSRANGE", lo, hi)
            return
        except redis.ResponseError as e:  # Redis 6.2 has no ADDSLOTSRANGE
            if "unknown" not in str(e).lower() and "syntax" not in str(e).lower():
                raise
        for start in range(lo, hi + 1, _ADDSLOTS_BATCH):
            node.call("CLUSTER", "ADDSLOTS", *range(start, min(hi, start + _ADDSLOTS_BATCH - 1) + 1))

    def _known(self, n: ClusterNode) -> int:
        try:
            return int(self._info(n).get("cluster_known_nodes", 0))
        except (redis.RedisError, OSError):
            return 0

    def _assigned(self, n: ClusterNode) -> int:
        try:
            return int(self._info(n).get("cluster_slots_assigned", 0))
        except (redis.RedisError, OSError):
            return 0

    @staticmethod
    def _info(n: ClusterNode) -> dict[str, str]:
        raw = n.call("CLUSTER", "INFO", timeout=1.0)
        if isinstance(raw, bytes):
            raw = raw.decode()
        return dict(line.split(":", 1) for line in str(raw).splitlines() if ":" in line)

    @staticmethod
    def _wait(cond: Any, timeout: float, what: str, interval: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if cond():
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RedisUnavailable(f"Redis Cluster: {what} within {timeout:g} s")
            time.sleep(interval)

    def stop(self) -> None:
        """Stop every node and remove the data directories (a caller's ``data_dir`` stays)."""
        for n in self.nodes:
            n.server.stop()
        if self._tmp:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()

    close = stop

    def __enter__(self) -> RedisClusterServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- topology -----------------------------------------------------------------------------

    def node_id(self, n: ClusterNode) -> str:
        """The node's cluster id."""
        return str(n.call("CLUSTER", "MYID"))

    def topology(self, via: ClusterNode | None = None) -> list[NodeInfo]:
        """Every node as one live node sees it (CLUSTER NODES)."""
        viewer = via or next(n for n in self.nodes if n.alive)
        raw = viewer.call("CLUSTER", "NODES")  # the raw text: no callback for "CLUSTER" alone
        out = []
        for line in str(raw).splitlines():
            parts = line.split()
            if len(parts) < 8:
                continue
            port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            flags = parts[2].split(",")
            ranges = []
            for s in parts[8:]:
                if s.startswith("["):
                    continue
                lo, _, hi = s.partition("-")
                ranges.append((int(lo), int(hi or lo)))
            out.append(NodeInfo(port=port, node_id=parts[0], primary="master" in flags,
                                primary_id=None if parts[3] == "-" else parts[3],
                                slots=tuple(ranges)))
        return out

    def primary_of_slot(self, slot: int) -> ClusterNode:
        """The node serving ``slot`` now."""
        for info in self.topology():
            if info.primary and any(lo <= slot <= hi for lo, hi in info.slots):
                return self.node(info.port)
        raise RedisUnavailable(f"no primary serves slot {slot}")

    def primary_of_key(self, key: str | bytes) -> ClusterNode:
        """The node serving a key now."""
        return self.primary_of_slot(slot_of(key))

    def replicas_of(self, primary: ClusterNode) -> list[ClusterNode]:
        """The nodes replicating ``primary`` (live or not)."""
        pid = self.node_id(primary)
        return [self.node(i.port) for i in self.topology() if i.primary_id == pid]

    def primaries(self) -> list[ClusterNode]:
        """The nodes serving slots now."""
        return [self.node(i.port) for i in self.topology() if i.primary and i.slots]

    # --- health -------------------------------------------------------------------------------

    def agreed_topology(self) -> list[NodeInfo] | None:
        """The topology if every live node reports ``cluster_state:ok`` and the same view of
        who serves which slots and who replicates whom; else None."""
        views = []
        topo: list[NodeInfo] = []
        for n in self.nodes:
            if not n.alive:
                continue
            if self._info(n).get("cluster_state") != "ok":
                return None
            topo = self.topology(n)
            views.append(sorted((i.port, i.primary, i.primary_id or "", i.slots) for i in topo))
        if not views or any(v != views[0] for v in views):
            return None
        return topo

    def healthy(self) -> bool:
        """Every node up and ``cluster_state:ok``, all agreeing on primaries that each have
        their replicas attached and in sync."""
        if not all(n.alive for n in self.nodes):
            return False
        topo = self.agreed_topology()
        if topo is None:
            return False
        prim = [i for i in topo if i.primary and i.slots]
        if len(prim) != self.n_primaries:
            return False
        for p in prim:
            reps = [i for i in topo if i.primary_id == p.node_id]
            if len(reps) != self.replicas_per_primary:
                return False
            for rep in reps:
                if not self._in_sync(self.node(rep.port)):
                    return False
        return True

    def _in_sync(self, replica: ClusterNode) -> bool:
        info = replica.client().info("replication")
        return bool(info.get("role") == "slave" and info.get("master_link_status") == "up"
                    and not int(info.get("master_sync_in_progress", 0)))

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Block until :meth:`healthy`."""
        self._wait(self.healthy, timeout, "not healthy", interval=0.1)

    def state_ok(self) -> bool:
        """``cluster_state:ok`` on every live node (some may be down)."""
        return all(self._info(n).get("cluster_state") == "ok" for n in self.nodes if n.alive)

    # --- faults -------------------------------------------------------------------------------

    def failover(self, replica: ClusterNode, timeout: float = 30.0, option: str = "") -> None:
        """``CLUSTER FAILOVER [FORCE|TAKEOVER]`` on ``replica``; returns once it serves its old
        primary's slots."""
        replica.call("CLUSTER", "FAILOVER", *([option] if option else []))
        self._wait(lambda: any(i.port == replica.port and i.primary and i.slots
                               for i in self.topology(replica)), timeout,
                   f"{replica.name} was not promoted")

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL one node (a crash)."""
        node.server.kill()

    def wait_promoted(self, dead: ClusterNode, timeout: float = 30.0) -> ClusterNode:
        """After ``dead`` was killed: wait until one of its replicas serves its slots and every
        live node says ``cluster_state:ok``; that replica."""
        deadline = time.monotonic() + timeout
        viewer = next(n for n in self.nodes if n.alive)
        dead_id: str | None = None
        for i in self.topology(viewer):
            if i.port == dead.port:
                dead_id = i.node_id
        reps = [n for n in self.nodes if n.alive and any(
            i.port == n.port and i.primary_id == dead_id for i in self.topology(viewer))]
        while True:
            try:
                for rep in reps:
                    if any(i.port == rep.port and i.primary and i.slots
                           for i in self.topology(rep)) and self.state_ok():
                        return rep
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RedisUnavailable(f"no replica of {dead.name} was promoted in {timeout:g} s")
            time.sleep(0.05)

    def restart(self, node: ClusterNode) -> None:
        """Start a killed node again on its port; it rejoins (as a replica if its slots moved)."""
        if not node.alive:
            node.server.start()

    def restore(self, timeout: float = 60.0) -> None:
        """Bring the cluster back to full health after faults: restart dead nodes, re-attach
        replicas and, so every test starts alike, put the original primaries back in charge."""
        for n in self.nodes:
            if not n.alive:
                self.restart(n)
        self.wait_healthy(timeout)
        for p in self.nodes[:self.n_primaries]:
            topo = self.agreed_topology() or []
            if not any(i.port == p.port and i.primary and i.slots for i in topo):
                self.failover(p, timeout)
                self.wait_healthy(timeout)

    def flushall(self) -> None:
        """Empty every primary (replicas follow)."""
        for p in self.primaries():
            p.call("FLUSHALL")

