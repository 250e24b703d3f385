"""Pod networking on one node: what the kubelet (through the runtime) gets from a CNI bridge
plugin with host-local IPAM in Kubernetes.

For each pod sandbox: a network namespace `kl-<sandbox id[:12]>`, a veth pair whose host end
`veth<hash8>` is a port of the node bridge and whose pod end is `eth0` inside the namespace,
an address from the node's podCIDR and a default route via the bridge's gateway address.
Every container of the pod joins that namespace, so they share the pod IP and localhost.

Nothing here is remembered only in memory: the state dir holds the IPAM files, one record
per sandbox and the podCIDR last used, and the rest is read back from the kernel, so a
restarted kubelet finds its pods (status, list_sandboxes) and can clean up after a crash
at any step. Every operation is idempotent. hostNetwork pods never come here.

Paths (state dir, netns dir), the bridge name and the command runner are injected: a lab VM
runs this inside its own network and mount namespaces, a test inside a private namespace.
"""
from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from worker.network import bridge as br
from worker.network import iptables
from worker.network.cmd import CommandRunner, Runner, run_checked
from worker.network.errors import NetworkError
from worker.network.ipam import IPAM
from worker.network.netns import IPROUTE2_NETNS_DIR, NetnsDir

NETNS_PREFIX = "kl-"
POD_IFNAME = "eth0"
# unprivileged ICMP sockets for every group: ping works in the pod without CAP_NET_RAW, as
# container runtimes set it up for pods
PING_GROUP_RANGE = "0 2147483647"
_SANDBOX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class PodNetworkStatus:
    netns_name: str
    netns_path: Path
    ip: str
    gateway: str
    host_veth: str


class PodNetwork:
    def __init__(self, state_dir: Path, *, bridge: str = "cni0", netns_dir: Path = IPROUTE2_NETNS_DIR,
                 mtu: int = 1500, cluster_cidr: str = "10.244.0.0/16", runner: Runner | None = None,
                 subnet_file: Path | None = None):
        if not 0 < len(bridge) <= 15 or "/" in bridge or " " in bridge:
            raise ValueError(f"bridge name {bridge!r}: must be 1-15 characters without '/' or spaces")
        self.state_dir = Path(state_dir)
        self.bridge = bridge
        self.mtu = mtu  # without an overlay's subnet file (or with one that says nothing usable)
        self.subnet_file = Path(subnet_file) if subnet_file else None
        self.cluster_cidr = ipaddress.IPv4Network(cluster_cidr)
        self.run: Runner = runner or CommandRunner()
        self.netns = NetnsDir(netns_dir, self.run)
        self._records = self.state_dir / "sandboxes"
        self._cidr_file = self.state_dir / "pod-cidr"
        self._ipam: IPAM | None = None
        self._bridge_lock = asyncio.Lock()
        self._locks: dict[str, asyncio.Lock] = {}
        if self._cidr_file.exists():
            self._ipam = IPAM(self.state_dir / "ipam", self._cidr_file.read_text().strip())

    # --- names -------------------------------------------------------------------------------

    @staticmethod
    def netns_name(sandbox_id: str) -> str:
        return NETNS_PREFIX + sandbox_id[:12]

    @staticmethod
    def host_veth_name(sandbox_id: str) -> str:
        return "veth" + hashlib.sha256(sandbox_id.encode()).hexdigest()[:8]

    def pod_mtu(self) -> int:
        """The MTU of a new pod's veth: FLANNEL_MTU from the overlay's subnet file, as flannel's
        CNI plugin reads it on every ADD (the agent may start after the kubelet, or the underlay
        change), else the configured MTU. 1500 inside a 1450 VXLAN would drop big packets."""
        if self.subnet_file is None:
            return self.mtu
        try:
            text = self.subnet_file.read_text()
        except (OSError, UnicodeDecodeError):
            return self.mtu
        for line in text.splitlines():
            key, _, value = line.strip().partition("=")
            if key == "FLANNEL_MTU":
                try:
                    mtu = int(value.strip())
                except ValueError:
                    return self.mtu
                return mtu if 68 <= mtu <= 65535 else self.mtu  # IPv4's minimum; a bad file is ignored
        return self.mtu

    @property
    def pod_cidr(self) -> str | None:
        return str(self._ipam.subnet) if self._ipam else None

    @property
    def ipam(self) -> IPAM:
        if self._ipam is None:
            raise NetworkError(f"bridge {self.bridge}: no pod CIDR yet, call ensure_bridge(node.spec.podCIDR) first")
        return self._ipam

    # --- the node ----------------------------------------------------------------------------

    async def ensure_bridge(self, pod_cidr: str) -> None:
        """The bridge with the podCIDR's gateway address, IP forwarding, and the masquerade and
        forward rules. Idempotent; a changed podCIDR replaces the old address and rules."""
        subnet = ipaddress.IPv4Network(pod_cidr)
        if not subnet.subnet_of(self.cluster_cidr):
            raise ValueError(f"pod CIDR {subnet} is not inside the cluster CIDR {self.cluster_cidr}")
        async with self._bridge_lock:
            ipam = IPAM(self.state_dir / "ipam", str(subnet))
            await br.ensure_bridge(self.run, self.bridge, ipaddress.IPv4Interface(f"{ipam.gateway}/{subnet.prefixlen}"))
            await run_checked(self.run, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
            await iptables.sync_rules(self.run, self.bridge, str(subnet), str(self.cluster_cidr))
            self._cidr_file.parent.mkdir(parents=True, exist_ok=True)
            self._cidr_file.write_text(f"{subnet}\n")
            self._ipam = ipam

    # --- one pod -----------------------------------------------------------------------------

    async def setup_pod(self, sandbox_id: str, pod_name: str, namespace: str) -> PodNetworkStatus:
        """Wire the sandbox into the bridge; calling it again returns the same status (and
        repairs whatever a crash left half done)."""
        _check_sandbox_id(sandbox_id)
        ipam = self.ipam
        async with self._lock(sandbox_id):
            ns = self.netns_name(sandbox_id)
            for other in self._record_ids():
                if other != sandbox_id and self.netns_name(other) == ns:
                    raise NetworkError(f"sandbox {sandbox_id}: network namespace {ns} already belongs to "
                                       f"sandbox {other} (sandbox ids must differ in their first 12 characters)")
            is_new = not (self._records / sandbox_id).exists() and ipam.lookup(sandbox_id) is None
            try:
                return await self._setup(sandbox_id, pod_name, namespace, ipam)
            except Exception:
                if not is_new:
                    raise  # a repair that failed must not take down a pod that was working
                # as a runtime does after a failed CNI ADD: leave nothing half made
                try:
                    await self._teardown(sandbox_id)
                except NetworkError:
                    pass
                raise

    async def _setup(self, sandbox_id: str, pod_name: str, namespace: str, ipam: IPAM) -> PodNetworkStatus:
        ns, veth = self.netns_name(sandbox_id), self.host_veth_name(sandbox_id)
        self._write_record(sandbox_id, pod_name, namespace)
        ip = ipam.allocate(sandbox_id)  # before anything in the kernel: teardown finds all by it
        await self.netns.ensure(ns)
        await self._ensure_veth(ns, veth)
        await run_checked(self.run, ["ip", "link", "set", veth, "master", self.bridge, "up"])
        # hairpin (the CNI bridge plugin's hairpinMode): a pod reaching itself through its
        # Service's address is DNATed back to itself, so the bridge must send the frame out of
        # the port it came in on, which it otherwise never does
        await run_checked(self.run, ["ip", "link", "set", veth, "type", "bridge_slave", "hairpin", "on"])
        gateway, plen = str(ipam.gateway), ipam.subnet.prefixlen
        await run_checked(self.run, self.netns.exec_argv(ns, ["ip", "-batch", "-"]), stdin=(
            f"addr replace {ip}/{plen} dev {POD_IFNAME}\n"
            f"link set lo up\n"
            f"link set {POD_IFNAME} up\n"
            f"route replace default via {gateway} dev {POD_IFNAME}\n"))
        await run_checked(self.run, self.netns.exec_argv(
            ns, ["sysctl", "-q", "-w", f"net.ipv4.ping_group_range={PING_GROUP_RANGE}"]))
        return PodNetworkStatus(ns, self.netns.path(ns), ip, gateway, veth)

    async def _ensure_veth(self, ns: str, veth: str) -> None:
        host = await br.link_info(self.run, veth)
        pod = await br.link_info(self.run, POD_IFNAME, netns_argv=lambda a: self.netns.exec_argv(ns, a))
        if host and pod and pod.get("link_index") == host.get("ifindex"):
            return
        # Half a pair, or a pair that is not ours (our host veth whose peer sits in an older
        # namespace still held by a process): start the pair over.
        if host:
            await run_checked(self.run, ["ip", "link", "delete", veth], tolerate=br.MISSING_LINK)
        if pod:
            await run_checked(self.run, self.netns.exec_argv(ns, ["ip", "link", "delete", POD_IFNAME]),
                              tolerate=br.MISSING_LINK)
        # the pod end is born inside the namespace as eth0: no temporary name on the node
        mtu = str(self.pod_mtu())
        await run_checked(self.run, [
            "ip", "link", "add", veth, "mtu", mtu, "type", "veth",
            "peer", "name", POD_IFNAME, "mtu", mtu, "netns", str(self.netns.path(ns))])

    async def teardown_pod(self, sandbox_id: str) -> None:
        """Remove the sandbox's veth and namespace and free its address. Idempotent, and safe
        after a setup that stopped anywhere."""
        _check_sandbox_id(sandbox_id)
        lock = self._lock(sandbox_id)
        async with lock:
            await self._teardown(sandbox_id)
        if not lock.locked():
            self._locks.pop(sandbox_id, None)

    async def _teardown(self, sandbox_id: str) -> None:
        # the veth first: a namespace still held by a container process would keep it alive
        await run_checked(self.run, ["ip", "link", "delete", self.host_veth_name(sandbox_id)],
                          tolerate=br.MISSING_LINK)
        await self.netns.delete(self.netns_name(sandbox_id))
        IPAM.release_in(self.state_dir / "ipam", sandbox_id)
        (self._records / sandbox_id).unlink(missing_ok=True)

    async def status(self, sandbox_id: str) -> PodNetworkStatus | None:
        """The sandbox's network as the kernel and the IPAM files show it, or None unless it is
        completely set up (namespace, veth on our bridge, eth0 holding the allocated address)."""
        _check_sandbox_id(sandbox_id)
        if self._ipam is None:
            return None
        ip = self._ipam.lookup(sandbox_id)
        ns, veth = self.netns_name(sandbox_id), self.host_veth_name(sandbox_id)
        if ip is None or not self.netns.exists(ns):
            return None
        host = await br.link_info(self.run, veth)
        if host is None or host.get("master") != self.bridge:
            return None
        res = await self.run(self.netns.exec_argv(ns, ["ip", "-j", "-4", "addr", "show", "dev", POD_IFNAME]))
        if res.returncode != 0:
            return None
        links = json.loads(res.stdout or "[]")
        if not links or links[0].get("link_index") != host.get("ifindex"):
            return None
        if ip not in {a.get("local") for a in links[0].get("addr_info", [])}:
            return None
        return PodNetworkStatus(ns, self.netns.path(ns), ip, str(self._ipam.gateway), veth)

    async def list_sandboxes(self) -> list[str]:
        """Sandbox ids this state dir has networking for (set up, or partly set up)."""
        ids = set(self._record_ids())
        if self._ipam:
            ids.update(self._ipam.allocations().values())
        return sorted(ids)

    async def gc(self, live_sandbox_ids: Iterable[str]) -> list[str]:
        """Tear down every sandbox not in live_sandbox_ids (the kubelet's housekeeping after a
        restart or a lost teardown); returns the sandbox ids torn down."""
        live = set(live_sandbox_ids)
        gone = [s for s in await self.list_sandboxes() if s not in live]
        for sandbox_id in gone:
            await self.teardown_pod(sandbox_id)
        if self._ipam:
            self._ipam.gc(live)
        return gone

    async def cleanup_all(self, *, remove_bridge: bool = False) -> None:
        """Remove every sandbox network of this state dir; with remove_bridge also the bridge
        and our iptables rules (for tests and `kubelab reset`-like teardown)."""
        for sandbox_id in await self.list_sandboxes():
            await self.teardown_pod(sandbox_id)
        if remove_bridge:
            async with self._bridge_lock:
                await iptables.remove_rules(self.run, self.bridge)
                await br.delete_bridge(self.run, self.bridge)
                self._cidr_file.unlink(missing_ok=True)
                self._ipam = None

    # --- internals ---------------------------------------------------------------------------

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def _write_record(self, sandbox_id: str, pod_name: str, namespace: str) -> None:
        self._records.mkdir(parents=True, exist_ok=True)
        record = {"pod": pod_name, "namespace": namespace, "netns": self.netns_name(sandbox_id),
                  "hostVeth": self.host_veth_name(sandbox_id), "bridge": self.bridge}
        (self._records / sandbox_id).write_text(json.dumps(record) + "\n")

    def _record_ids(self) -> list[str]:
        try:
            return [e.name for e in self._records.iterdir()]
        except FileNotFoundError:
            return []


def _check_sandbox_id(sandbox_id: str) -> None:
    if not _SANDBOX_ID.match(sandbox_id):
        raise ValueError(f"sandbox id {sandbox_id!r}: must be 1-128 characters of letters, digits, '_', '.', '-'")
