"""A private Redis Cluster for tests: masters only, on free ports, with their own files."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import redis

from llm_worker.testing.redis_server import RedisServer

SLOTS = 16384


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports, held together while chosen so none repeats."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


class RedisCluster:
    """``masters`` cluster-enabled ``redis-server`` nodes, no replicas, the hash slots
    split evenly; each node keeps an append-only file, so a restart keeps the data."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        ports = free_ports(2 * masters)
        self.bus_ports = ports[masters:]
        self.nodes: list[RedisServer] = []
        for index, (port, bus_port) in enumerate(zip(ports[:masters], self.bus_ports, strict=True)):
            node_directory = directory / f"node-{index}"
            arguments = {
                "cluster-enabled": "yes",
                "cluster-config-file": str(node_directory / f"nodes-{port}.conf"),
                "cluster-port": str(bus_port),
                "cluster-node-timeout": "2000",
            }
            extra_args = [
                part for name, value in arguments.items() for part in (f"--{name}", value)
            ]
            self.nodes.append(RedisServer(node_directory, port, extra_args=extra_args))

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The first node's URL, enough for a cluster client to find the others."""
        return self.nodes[0].url

    def start(self) -> None:
        """Start every node, join them into one cluster unless they already are, and
        return once every node reports ``cluster_state:ok``."""
        try:
            for node in self.nodes:
                node.start()
            if not any(int(info["cluster_slots_assigned"]) for info in self._infos()):
                self._form()
            self.wait_until_ok()
        except BaseException:
            self.stop(kill=True)
            raise

    def _form(self) -> None:
        """Give each node its share of the slots and a config epoch of its own, then
        introduce the others to the first node, as ``redis-cli --cluster create`` does."""
        count = len(self.nodes)
        for index, node in enumerate(self.nodes):
            with redis.Redis(port=node.port) as client:
                first, last = SLOTS * index // count, SLOTS * (index + 1) // count - 1
                client.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
                client.execute_command("CLUSTER SET-CONFIG-EPOCH", index + 1)
        with redis.Redis(port=self.nodes[0].port) as client:
            for node, bus_port in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                client.execute_command("CLUSTER MEET", "127.0.0.1", node.port, bus_port)

    def _infos(self) -> list[dict[str, str]]:
        infos = []
        for node in self.nodes:
            with redis.Redis(port=node.port, decode_responses=True) as client:
                infos.append(client.cluster("info"))
        return infos

    def _state(self, node: RedisServer) -> str:
        """``ok`` once the node knows every other and sees all slots served, else why not."""
        try:
            with redis.Redis(port=node.port, decode_responses=True) as client:
                info = client.cluster("info")
        except redis.ConnectionError as error:
            return str(error)
        if info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == len(self.nodes):
            return "ok"
        return " ".join(
            f"{name}:{info[name]}"
            for name in ("cluster_state", "cluster_known_nodes", "cluster_slots_ok")
        )

    def wait_until_ok(self, timeout: float = 20) -> None:
        """Return once every node reports the whole cluster ``ok``."""
        deadline = time.monotonic() + timeout
        while True:
            states = [self._state(node) for node in self.nodes]
            if all(state == "ok" for state in states):
                return
            if time.monotonic() > deadline:
                report = "\n".join(
                    f"--- node {index}, port {node.port}: {state}\n{self._log(node)}"
                    for index, (node, state) in enumerate(zip(self.nodes, states, strict=True))
                )
                raise RuntimeError(f"Redis Cluster not ok after {timeout} s:\n{report}")
            time.sleep(0.05)

    @staticmethod
    def _log(node: RedisServer) -> str:
        path = node.directory / "redis.log"
        return path.read_text() if path.exists() else "(no log)"

    def kill_node(self, index: int) -> None:
        """SIGKILL one master: its slots go unserved, as in a crash."""
        self.nodes[index].stop(kill=True)

    def restart_node(self, index: int) -> None:
        """Start a stopped node again and wait until the cluster is whole."""
        self.nodes[index].start()
        self.wait_until_ok()

    def stop(self, *, kill: bool = False) -> None:
        for node in self.nodes:
            node.stop(kill=kill)
