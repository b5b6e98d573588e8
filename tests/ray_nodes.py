"""Real Ray nodes for tests: `ray start --head` and `ray start --address=...`, on one machine.

One node runs on loopback. Two nodes cannot: with multi-node enabled, Ray 2.60 rewrites a
loopback `--address` (127.0.0.1, localhost) to the machine's interface address, while the
head's GCS listens on its node IP only, so a second node can never reach a loopback head
(and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which keeps a node on loopback, makes
`ray start --address` refuse to add a node at all). A multi-node cluster therefore runs every
node and driver on the machine's own interface address; its traffic still never leaves the machine.

Each node starts in a session of its own, so every daemon of that node (raylet, agents,
workers) shares one process group: a test stops exactly its own nodes (`ray stop` would stop
every Ray on the machine) and can take one node away in the middle of a run.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_env(multi_node: bool = False, **extra: str) -> dict:
    """The environment every process of one test cluster shares."""
    return {**os.environ,
            # "0" keeps a current Ray on 127.0.0.1; "1" (Linux's default) allows more nodes.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1" if multi_node else "0",
            "RAY_AUTH_MODE": "token",                    # the job CLI sends the token...
            "RAY_AUTH_TOKEN": secrets.token_hex(32),     # ...of this cluster, not ~/.ray's
            # Workers on every node import the project from this checkout.
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            **extra}


@dataclass
class Node:
    pid: int            # the `ray start` process: leader of the node's process group
    temp_dir: str

    def kill(self) -> None:
        """As a lost machine: every process of the node dies at once, nothing is told."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Cluster:
    env: dict
    ip: str                        # every node's IP
    gcs: str                       # IP:PORT, for `ray start --address` and ray.init
    dashboard: str                 # http://IP:PORT, for the job and state CLIs
    nodes: list = field(default_factory=list)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        for node in self.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)


def _ports() -> list[str]:
    # Other Ray instances on this machine may hold the default ports (52365, 8076, ...).
    names = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")
    return [f"--{name}={free_port()}" for name in names]


def _start(ip: str, args: list[str], env: dict) -> Node:
    if shutil.which("ray", path=env.get("PATH")) is None:
        raise RuntimeError("the ray CLI is not installed (ray[default])")
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")   # short: Ray's socket paths have a length limit
    proc = subprocess.Popen(["ray", "start", f"--node-ip-address={ip}", "--disable-usage-stats",
                             f"--temp-dir={temp_dir}", *_ports(), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out, _ = proc.communicate(timeout=120)
    node = Node(proc.pid, temp_dir)
    if proc.returncode != 0:
        node.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise RuntimeError(f"ray start {' '.join(args)} failed:\n{out[-3000:]}")
    return node


def start_head(num_cpus: int = 4, resources: dict | None = None, multi_node: bool = False,
               **env_extra: str) -> Cluster:
    env = node_env(multi_node, **env_extra)
    ip = "127.0.0.1"
    if multi_node:
        from ray._common.network_utils import node_ip_address_from_perspective

        ip = node_ip_address_from_perspective(None)   # the address Ray itself picks for this machine
    gcs, dash, client = free_port(), free_port(), free_port()
    args = ["--head", f"--port={gcs}", f"--dashboard-host={ip}", f"--dashboard-port={dash}",
            f"--ray-client-server-port={client}", f"--num-cpus={num_cpus}"]
    if resources:
        args.append(f"--resources={json.dumps(resources)}")
    cluster = Cluster(env, ip, f"{ip}:{gcs}", f"http://{ip}:{dash}")
    cluster.nodes.append(_start(ip, args, env))
    return cluster


def add_node(cluster: Cluster, num_cpus: int, resources: dict | None = None) -> Node:
    args = [f"--address={cluster.gcs}", f"--num-cpus={num_cpus}"]
    if resources:
        args.append(f"--resources={json.dumps(resources)}")
    node = _start(cluster.ip, args, cluster.env)   # a head from start_head(multi_node=True)
    cluster.nodes.append(node)
    return node


def state(cluster: Cluster, what: str, *filters: str) -> list[dict]:
    """`ray list actors|nodes|placement-groups` as JSON (the state API a person would use)."""
    cmd = ["ray", "list", what, "--address", cluster.dashboard, "--format", "json", "--detail"]
    for f in filters:
        cmd += ["--filter", f]
    out = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)
