"""Hosts made of network namespaces, for exercising the overlay agent (worker/overlay) on real
kernel networking without touching the host's own network namespace. Used by
tests/integration/test_overlay.py and by `make bench` (bench/overlay.py); not by the agent.

`build_hosts` makes an underlay namespace holding a bridge `br0` (NET.254/24) and one namespace
per node with its underlay interface `eth1` (NET.I) on that bridge, plus an `eth0` holding
10.0.2.15 with the default route, as Vagrant's NAT interface does on every VM (its peer stays
in the node's namespace, so nothing sent there goes anywhere). `RELAY` is a process that listens
inside a namespace and relays each connection to a port on the host's loopback, so that agents
reach an API server on the host's loopback with no address or route added to the host.
Deleting the namespaces (`delete_namespaces`) removes every link, route and rule in them.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

NETNS = Path("/var/run/netns")

# Listens inside a network namespace, relays each connection to a port on the host's loopback.
# The listening socket is made after setns() into the namespace, then the process returns to
# its own: a socket stays in the namespace it was made in.
RELAY = r"""
import asyncio, ctypes, os, socket, sys
ns, host, port, target = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
libc = ctypes.CDLL(None, use_errno=True)
def setns(fd):
    if libc.setns(fd, 0x40000000) != 0:
        raise OSError(ctypes.get_errno(), "setns")
own, other = os.open("/proc/self/ns/net", os.O_RDONLY), os.open(ns, os.O_RDONLY)
setns(other)
try:
    listener = socket.create_server((host, port))
finally:
    setns(own)
async def pump(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except OSError:
        pass
    finally:
        w.close()
async def handle(r, w):
    try:
        ur, uw = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        w.close()
        return
    await asyncio.gather(pump(r, uw), pump(ur, w))
async def main():
    server = await asyncio.start_server(handle, sock=listener)
    print("relaying", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


def sh(*argv: str, ns: str | None = None, check: bool = True) -> str:
    """Run a command on the host, or in the named namespace; its stdout."""
    prefix = ["nsenter", f"--net={NETNS / ns}", "--"] if ns else []
    r = subprocess.run(prefix + list(argv), check=False, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in {ns or 'host'} failed: {r.stderr}")
    return r.stdout


def build_hosts(underlay: str, nodes: dict[int, str], net: str) -> None:
    """The underlay namespace with br0 (net.254/24) and, for each i: name, the node namespace
    with eth1 (net.i/24) on br0 and a NAT-like eth0 (10.0.2.15, the default route)."""
    sh("ip", "netns", "add", underlay)
    sh("ip", "-n", underlay, "link", "set", "lo", "up")
    sh("ip", "-n", underlay, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", underlay, "addr", "add", f"{net}.254/24", "dev", "br0")
    sh("ip", "-n", underlay, "link", "set", "br0", "up")
    for i, n in nodes.items():
        sh("ip", "netns", "add", n)
        sh("ip", "-n", n, "link", "set", "lo", "up")
        sh("ip", "-n", underlay, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth1", "netns", n)
        sh("ip", "-n", underlay, "link", "set", f"v{i}", "master", "br0", "up")
        sh("ip", "-n", n, "addr", "add", f"{net}.{i}/24", "dev", "eth1")
        sh("ip", "-n", n, "link", "set", "eth1", "up")
        # the NAT interface of a Vagrant VM: the same address everywhere, the default route;
        # its peer stays in the node's namespace, so nothing sent there goes anywhere
        sh("ip", "-n", n, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0nat")
        sh("ip", "-n", n, "addr", "add", "10.0.2.15/24", "dev", "eth0")
        sh("ip", "-n", n, "link", "set", "eth0", "up")
        sh("ip", "-n", n, "link", "set", "eth0nat", "up")
        sh("ip", "-n", n, "route", "add", "default", "via", "10.0.2.2", "dev", "eth0")


def start_relay(ns: str, host: str, port: int, target: int) -> subprocess.Popen:
    """RELAY listening on host:port inside namespace ns, to 127.0.0.1:target on the host; returns
    once it listens (in its own process group: stop it with the group)."""
    relay = subprocess.Popen([sys.executable, "-c", RELAY, str(NETNS / ns), host, str(port), str(target)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)
    line = relay.stdout.readline().strip()
    if line != "relaying":
        relay.kill()
        relay.wait()
        raise AssertionError(f"the API relay did not start: {line}")
    return relay


def ours(suffix: str) -> list[str]:
    """The namespaces whose names hold suffix (nodes, underlay, and pods named after them)."""
    return sorted(n for n in os.listdir(NETNS) if suffix in n) if NETNS.exists() else []


def delete_namespaces(suffix: str) -> list[str]:
    """Delete every namespace of ours; those that are still there afterwards."""
    for ns in ours(suffix):
        subprocess.run(["ip", "netns", "delete", ns], check=False, capture_output=True)
        (NETNS / ns).unlink(missing_ok=True)
    return [f"netns {ns}" for ns in ours(suffix)]
