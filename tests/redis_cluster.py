"""A private Redis Cluster for tests: 3 masters and 3 replicas on free loopback ports.

Never the shared Redis on 6379: each node is a ``redis-server --cluster-enabled yes`` of
ours (``redis_server.RedisServer``) in a temp dir, joined by ``redis-cli --cluster create
... --cluster-replicas 1``. A test may kill a master (its replica takes over after
``cluster-node-timeout``), restart a node, or the whole cluster from its AOF.

Fixtures (``tests/conftest.py`` loads this module as a plugin):

* ``redis_cluster``: one cluster per test session; tests isolate themselves with a unique
  key prefix, whose slot is on one master or another;
* ``aof_redis_cluster``: a cluster of the test's own whose nodes fsync their AOF before
  every reply, so ``restart()`` (every node killed and started again) loses nothing
  acknowledged.

``private_cluster(directory, ...)`` builds one by hand (another node timeout, fsync policy).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from redis_server import SERVER_BINARY, RedisServer, _free_port

CLI_BINARY = shutil.which("redis-cli")
NODE_TIMEOUT_MS = 3000  # a loaded CI machine must not fail a master over by mistake


class ClusterNode(RedisServer):
    """A ``redis-server`` in cluster mode; its cluster bus on a free port of its own
    (``cluster-port``), kept across restarts (the other nodes know it by it)."""

    def __init__(
        self,
        directory: Path,
        *,
        node_timeout: int,
        appendfsync: str | None,
        password: str | None = None,
    ) -> None:
        self.bus: int | None = None
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout),
            "--cluster-replica-validity-factor", "0",  # a replica may always take over
            "--repl-diskless-sync-delay", "0",  # a replica syncs at once, not 5 s later
        ]  # fmt: skip
        if appendfsync is not None:
            args += ["--appendfsync", appendfsync, "--auto-aof-rewrite-percentage", "0"]
        if password is not None:  # a replica logs in to its master with it
            args += ["--masterauth", password]
        self._cluster_args = tuple(args)
        super().__init__(
            directory, appendonly=appendfsync is not None, extra=tuple(args), password=password
        )

    def start(self) -> None:
        if self.bus is None or not (self.directory / "nodes.conf").exists():
            self.bus = _free_port()  # until the node has joined, any free port will do
        self.extra = (*self._cluster_args, "--cluster-port", str(self.bus))
        super().start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class RedisClusterServers:
    """Six nodes joined as 3 masters with a replica each."""

    def __init__(
        self,
        directory: Path,
        *,
        node_timeout: int = NODE_TIMEOUT_MS,
        appendfsync: str | None = None,
        password: str | None = None,
    ) -> None:
        self.directory = directory
        self.password = password  # requirepass of every node: ``url`` leaves it out
        self.nodes: list[ClusterNode] = []
        try:
            for i in range(6):
                self.nodes.append(
                    ClusterNode(
                        directory / f"node{i}",
                        node_timeout=node_timeout,
                        appendfsync=appendfsync,
                        password=password,
                    )
                )
            out = subprocess.run(
                [CLI_BINARY or "redis-cli", *self._login(), "--cluster", "create",
                 *(n.address for n in self.nodes), "--cluster-replicas", "1", "--cluster-yes"],
                check=False, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if out.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{out.stdout}{out.stderr}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    def _login(self) -> list[str]:
        return ["-a", self.password, "--no-auth-warning"] if self.password else []

    @property
    def url(self) -> str:
        """Two seeds: the others are learnt from them."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes[:2])

    def wait_ok(self, timeout: float = 60.0, *, replicas: bool = True) -> None:
        """Until every running node says the cluster is ok and agrees on the masters, and
        (``replicas``) every master's replicas are in sync (``WAIT`` counts only those)."""
        deadline = time.monotonic() + timeout
        why = ""
        while True:
            views = []
            try:
                for n in self.nodes:
                    if n.process is None:
                        continue
                    c = n.client()
                    if c.cluster("INFO").get("cluster_state") != "ok":
                        raise RuntimeError(f"{n.address} does not say the cluster is ok")
                    views.append(sorted((int(s), m[1]) for s, _, m, *_ in c.cluster("SLOTS")))
                    if replicas:
                        self._check_in_sync(n, c.execute_command("ROLE"))
                if views and all(v == views[0] for v in views):
                    return
                why = f"the nodes disagree on the masters: {views}"
            except (redis.RedisError, RuntimeError) as exc:
                why = str(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the cluster in {self.directory} is not ok after {timeout} s: {why}"
                )
            time.sleep(0.1)

    def _check_in_sync(self, node: ClusterNode, role: list[Any]) -> None:
        """A replica has finished its sync (its link is ``connected``); a master lists as
        in sync every running replica that names it."""
        if role[0] == b"slave" and role[3] != b"connected":
            raise RuntimeError(f"{node.address} is still syncing from its master ({role})")
        if role[0] == b"master":
            naming = 0
            for n in self.nodes:
                if n.process is not None and n is not node:
                    other = n.client().execute_command("ROLE")
                    naming += other[0] == b"slave" and int(other[2]) == node.port
            if len(role[2]) != naming:
                raise RuntimeError(f"a replica of {node.address} is not in sync ({role})")

    def master_of(self, tag: str) -> ClusterNode:
        """The running node that serves the slot of ``{tag}`` as master now."""
        slot = key_slot(tag.encode())
        for n in self.nodes:
            if n.process is None:
                continue
            for start, end, master, *_ in n.client().cluster("SLOTS"):
                if int(start) <= slot <= int(end):
                    return next(m for m in self.nodes if m.port == int(master[1]))
        raise RuntimeError(f"no master serves slot {slot}")

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        infos = master.client().execute_command("ROLE")
        ports = {int(r[1]) for r in infos[2]}
        return [n for n in self.nodes if n.port in ports]

    def restart_master_of(self, tag: str) -> None:
        """The master of ``{tag}``'s slot killed (SIGKILL) and started again from what it
        kept, at once: well within the node timeout, so it is still the master (no
        failover), and with ``appendfsync always`` it lost nothing it acknowledged."""
        node = self.master_of(tag)
        node.kill()
        node.start()
        self.wait_ok(replicas=False)  # its replica syncs again meanwhile: nothing waits on it
        if self.master_of(tag) is not node:
            raise RuntimeError(f"{node.address} was failed over while it restarted")

    def restart(self) -> None:
        """Every node killed (SIGKILL) and started again from what it kept."""
        for n in self.nodes:
            n.kill()
        for n in self.nodes:
            n.start()
        self.wait_ok()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def private_cluster(directory: Path, **options: object) -> RedisClusterServers:
    """A cluster of the caller's own; skips the test without the binaries."""
    if SERVER_BINARY is None or CLI_BINARY is None:
        pytest.skip("no redis-server and redis-cli binaries for a cluster")
    return RedisClusterServers(directory, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A cluster shared by the session; isolate tests with ``unique_prefix()``."""
    servers = private_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def aof_redis_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    """A cluster of this test's own whose nodes fsync before every reply."""
    servers = private_cluster(tmp_path / "cluster", appendfsync="always")
    try:
        yield servers
    finally:
        servers.stop()
