"""Pod networking on a node (worker/network) with real kernel networking.

Each test builds a private "node": a network namespace of its own, in which PodNetwork runs
through a `nsenter --net=...` command runner (as it runs inside a lab VM). The bridge
(`kltest<rand>`, never `cni0`), the KUBELAB-* iptables chains and ip_forward therefore live in
that namespace and leave the host's untouched; the pods' namespaces are `kl-<rand>...`.
Nothing routes out of it: the only other host a test reaches is an "outside" namespace it
builds itself. The fixture deletes every namespace named after the test's random suffix,
and with the node namespace go its bridge, veths and rules, even when the test fails.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from worker.network import AddressExhausted, CommandRunner, NetworkError, PodNetwork
from worker.network.cmd import run_checked

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables"),
                                reason="needs root, iproute2 and iptables")

NETNS_DIR = Path("/var/run/netns")
PING = ["ping"] if shutil.which("ping") else ["busybox", "ping"]


@dataclass
class Node:
    suffix: str
    netns: str
    run: CommandRunner
    state_dir: Path
    tmp: Path

    @property
    def bridge(self) -> str:
        return f"kltest{self.suffix}"

    def network(self, **kw) -> PodNetwork:
        kw.setdefault("bridge", self.bridge)
        return PodNetwork(self.state_dir, runner=self.run, **kw)

    def sandbox_id(self) -> str:
        # 64 hex characters like a runtime's ids; the first 12 (the netns name) start with our suffix
        return self.suffix + secrets.token_hex(29)

    async def sh(self, *argv: str, stdin: str | None = None) -> str:
        """A command in the node's namespace; must succeed."""
        return (await run_checked(self.run, argv, stdin=stdin)).stdout

    async def links(self) -> list[str]:
        return [link["ifname"] for link in json.loads(await self.sh("ip", "-j", "link", "show"))]

    async def iptables_save(self) -> str:
        return await self.sh("iptables-save")


def _mounted(path: Path) -> bool:
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except FileNotFoundError:
        return False


def _ours(suffix: str) -> list[str]:
    names = sorted(os.listdir(NETNS_DIR)) if NETNS_DIR.exists() else []
    return [ns for ns in names if ns.startswith((f"kltest-{suffix}", f"kl-{suffix}"))]


def _cleanup(suffix: str, tmp: Path) -> list[str]:
    """Delete the test's namespaces (the node's holds its bridge, veths and rules) and unmount
    those of a private netns dir; return what is still there."""
    for ns in _ours(suffix):
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        (NETNS_DIR / ns).unlink(missing_ok=True)
    for path in tmp.rglob("*"):
        if path.is_file() and _mounted(path):  # namespaces bind-mounted in a private netns dir
            subprocess.run(["umount", str(path)], capture_output=True)
    left = [f"netns {ns}" for ns in _ours(suffix)]
    left += [f"mount {ln.split()[4]}" for ln in Path("/proc/self/mountinfo").read_text().splitlines()
             if str(tmp) in ln.split()[4]]
    # links are made in the node's namespace: none of them may show up on the host
    host_links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout)
    left += [f"host link {link['ifname']}" for link in host_links if suffix in link["ifname"]]
    return left


@pytest.fixture
async def node(tmp_path):
    suffix = secrets.token_hex(3)
    netns = f"kltest-{suffix}-node"
    try:
        subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
        run = CommandRunner(prefix=["nsenter", f"--net={NETNS_DIR / netns}"])
        await run_checked(run, ["ip", "link", "set", "lo", "up"])
        yield Node(suffix, netns, run, tmp_path / "state", tmp_path)
    finally:
        left = _cleanup(suffix, tmp_path)
    assert not left, f"pod network test left behind: {left}"


async def ping(netns_path: Path, ip: str, attempts: int = 10) -> bool:
    # a retry, not a wait: the first success returns (a fresh veth may drop the first packets)
    for _ in range(attempts):
        proc = await asyncio.create_subprocess_exec(
            "nsenter", f"--net={netns_path}", "--", *PING, "-c1", "-W1", ip,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        if await proc.wait() == 0:
            return True
    return False


async def test_two_pods_get_distinct_addresses_and_reach_each_other_and_the_gateway(node):
    net = node.network()
    await net.ensure_bridge("10.244.1.0/24")
    a = await net.setup_pod(node.sandbox_id(), "web", "default")
    b = await net.setup_pod(node.sandbox_id(), "db", "default")

    subnet = ipaddress.IPv4Network("10.244.1.0/24")
    assert a.ip != b.ip
    assert {ipaddress.IPv4Address(a.ip), ipaddress.IPv4Address(b.ip)} <= set(subnet.hosts()) - {subnet[1]}
    assert a.gateway == b.gateway == "10.244.1.1"
    assert a.netns_path == NETNS_DIR / a.netns_name and a.netns_name.startswith(f"kl-{node.suffix}")
    assert a.netns_name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout

    assert await ping(a.netns_path, b.ip)
    assert await ping(b.netns_path, a.ip)
    assert await ping(a.netns_path, a.gateway)
    assert await ping(a.netns_path, "127.0.0.1")  # lo is up

    # the node end: both veths are ports of the bridge, which holds the gateway address
    for s in (a, b):
        link = json.loads(await node.sh("ip", "-d", "-j", "link", "show", "dev", s.host_veth))[0]
        assert link["master"] == node.bridge and "UP" in link["flags"]
        # hairpin: a pod reaching itself through its Service comes back out of its own port
        assert link["linkinfo"]["info_slave_data"]["hairpin"] is True
    addrs = json.loads(await node.sh("ip", "-j", "-4", "addr", "show", "dev", node.bridge))[0]["addr_info"]
    assert [(x["local"], x["prefixlen"]) for x in addrs] == [("10.244.1.1", 24)]
    # the pod end: eth0 with its /24 and a default route via the gateway
    inside = CommandRunner(prefix=["nsenter", f"--net={a.netns_path}"])
    routes = json.loads((await run_checked(inside, ["ip", "-j", "route"])).stdout)
    assert {"dst": "default", "gateway": "10.244.1.1", "dev": "eth0"}.items() <= routes[0].items()
    eth0 = json.loads((await run_checked(inside, ["ip", "-j", "-4", "addr", "show", "dev", "eth0"])).stdout)[0]
    assert eth0["mtu"] == 1500 and eth0["addr_info"][0]["local"] == a.ip
    group = (await run_checked(inside, ["cat", "/proc/sys/net/ipv4/ping_group_range"])).stdout.split()
    assert group == ["0", "2147483647"]
    # the node reaches its pods too
    assert await ping(NETNS_DIR / node.netns, b.ip)


async def test_setup_is_idempotent(node):
    net = node.network(mtu=1450)
    await net.ensure_bridge("10.244.1.0/24")
    sid = node.sandbox_id()
    first = await net.setup_pod(sid, "web", "default")
    again = await net.setup_pod(sid, "web", "default")
    assert again == first == await net.status(sid)
    assert [n for n in await node.links() if n.startswith("veth")] == [first.host_veth]
    mtu = json.loads(await node.sh("ip", "-j", "link", "show", "dev", first.host_veth))[0]["mtu"]
    assert mtu == 1450


async def test_pod_mtu_comes_from_the_overlays_subnet_file(node):
    """FLANNEL_MTU, read for each new pod as flannel's CNI plugin does: the overlay agent may
    write the file after the kubelet started; without it (or with nonsense in it) 1500."""
    subnet_file = node.tmp / "run-flannel" / "subnet.env"
    net = node.network(subnet_file=subnet_file)
    await net.ensure_bridge("10.244.1.0/24")

    async def mtus(s) -> tuple[int, int]:
        inside = CommandRunner(prefix=["nsenter", f"--net={s.netns_path}"])
        pod = json.loads((await run_checked(inside, ["ip", "-j", "link", "show", "dev", "eth0"])).stdout)[0]
        host = json.loads(await node.sh("ip", "-j", "link", "show", "dev", s.host_veth))[0]
        return pod["mtu"], host["mtu"]

    before = await net.setup_pod(node.sandbox_id(), "early", "default")  # no overlay yet
    assert await mtus(before) == (1500, 1500)
    subnet_file.parent.mkdir()
    subnet_file.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
                           "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
    vx = await net.setup_pod(node.sandbox_id(), "web", "default")
    assert await mtus(vx) == (1450, 1450)
    assert await mtus(before) == (1500, 1500)  # a running pod keeps its link, as with flannel
    for text in ("FLANNEL_MTU=jumbo\n", "FLANNEL_MTU=20\n", "FLANNEL_SUBNET=10.244.1.1/24\n"):
        subnet_file.write_text(text)
        assert net.pod_mtu() == 1500, text
    subnet_file.unlink()
    assert net.pod_mtu() == 1500
    assert node.network().pod_mtu() == 1500 and node.network(mtu=1400).pod_mtu() == 1400


async def test_teardown_releases_the_address_and_removes_netns_and_veth(node):
    net = node.network()
    await net.ensure_bridge("10.244.1.0/24")
    sid = node.sandbox_id()
    s = await net.setup_pod(sid, "web", "default")
    assert net.ipam.allocations() == {s.ip: sid}

    await net.teardown_pod(sid)
    assert net.ipam.allocations() == {}
    assert not s.netns_path.exists()
    assert s.host_veth not in await node.links()
    assert await net.status(sid) is None
    assert await net.list_sandboxes() == []
    await net.teardown_pod(sid)  # again: nothing to do, no error


async def test_a_new_podnetwork_on_the_same_state_dir_sees_existing_pods(node):
    net = node.network()
    await net.ensure_bridge("10.244.1.0/24")
    ids = [node.sandbox_id(), node.sandbox_id()]
    before = {sid: await net.setup_pod(sid, "web", "default") for sid in ids}

    restarted = node.network()  # the kubelet restarted: nothing in memory
    assert restarted.pod_cidr == "10.244.1.0/24"
    assert await restarted.list_sandboxes() == sorted(ids)
    assert {sid: await restarted.status(sid) for sid in ids} == before
    assert await restarted.setup_pod(ids[0], "web", "default") == before[ids[0]]
    third = await restarted.setup_pod(node.sandbox_id(), "api", "default")
    assert third.ip not in {s.ip for s in before.values()}
    assert await ping(third.netns_path, before[ids[1]].ip)


async def test_allocating_past_the_range_is_a_clear_error_and_leaves_nothing(node):
    net = node.network()
    await net.ensure_bridge("10.244.1.0/29")  # .1 gateway, .2-.6 pods
    ids = [node.sandbox_id() for _ in range(5)]
    pods = [await net.setup_pod(sid, f"p{i}", "default") for i, sid in enumerate(ids)]
    assert sorted(p.ip for p in pods) == [f"10.244.1.{i}" for i in range(2, 7)]
    late = node.sandbox_id()
    with pytest.raises(AddressExhausted, match=r"no free pod address in 10\.244\.1\.0/29.*all 5 addresses"):
        await net.setup_pod(late, "late", "default")
    assert late not in await net.list_sandboxes()
    assert not (NETNS_DIR / net.netns_name(late)).exists()
    await net.teardown_pod(ids[0])
    assert (await net.setup_pod(late, "late", "default")).ip == pods[0].ip


async def test_masquerade_rule_once_and_pods_reach_an_outside_host_through_a_drop_policy(node):
    # The host's FORWARD policy may be DROP: only our KUBELAB-FORWARD rules let pods out.
    await node.sh("iptables", "-w", "-P", "FORWARD", "DROP")
    net = node.network()
    await net.ensure_bridge("10.244.1.0/24")
    await net.ensure_bridge("10.244.1.0/24")
    rules = await node.iptables_save()
    masq = [r for r in rules.splitlines() if "MASQUERADE" in r]
    assert masq == ['-A KUBELAB-POSTROUTING -s 10.244.1.0/24 ! -d 10.244.0.0/16 -m comment --comment '
                    f'"kubelab:{node.bridge} masquerade pod traffic leaving the cluster" -j MASQUERADE']
    assert rules.count("-A POSTROUTING -j KUBELAB-POSTROUTING") == 1
    assert rules.count("-A FORWARD -j KUBELAB-FORWARD") == 1
    assert rules.count(f"-A KUBELAB-FORWARD -i {node.bridge} ") == 1
    assert rules.count(f"-A KUBELAB-FORWARD -o {node.bridge} ") == 1
    assert (await node.sh("sysctl", "-n", "net.ipv4.ip_forward")).strip() == "1"

    # an "outside" host on the node's uplink, with no route back to the pod network: it can
    # only answer a pod if the node masqueraded the pod's address behind its own
    outside = f"kltest-{node.suffix}-out"
    subprocess.run(["ip", "netns", "add", outside], check=True)
    up, out_ns = f"kltu{node.suffix}", NETNS_DIR / outside
    await node.sh("ip", "link", "add", up, "type", "veth", "peer", "name", "eth0", "netns", str(out_ns))
    await node.sh("ip", "addr", "add", "192.0.2.1/24", "dev", up)
    await node.sh("ip", "link", "set", up, "up")
    subprocess.run(["ip", "-n", outside, "addr", "add", "192.0.2.2/24", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", outside, "link", "set", "eth0", "up"], check=True)

    pod = await net.setup_pod(node.sandbox_id(), "web", "default")
    peer = await net.setup_pod(node.sandbox_id(), "db", "default")
    assert await ping(pod.netns_path, peer.ip)  # bridged, yet through FORWARD (br_netfilter)
    assert await ping(pod.netns_path, "192.0.2.2")
    masq_counter = [r for r in (await node.sh("iptables-save", "-c", "-t", "nat")).splitlines() if "MASQUERADE" in r]
    assert not masq_counter[0].startswith("[0:0]"), masq_counter  # the rule did the work


async def test_a_changed_pod_cidr_replaces_the_gateway_and_the_rule(node):
    net = node.network()
    await net.ensure_bridge("10.244.1.0/24")
    await net.ensure_bridge("10.244.2.0/24")
    addrs = json.loads(await node.sh("ip", "-j", "-4", "addr", "show", "dev", node.bridge))[0]["addr_info"]
    assert [(x["local"], x["prefixlen"]) for x in addrs] == [("10.244.2.1", 24)]
    masq = [r for r in (await node.iptables_save()).splitlines() if "MASQUERADE" in r]
    assert len(masq) == 1 and "-s 10.244.2.0/24" in masq[0]
    s = await net.setup_pod(node.sandbox_id(), "web", "default")
    assert ipaddress.IPv4Address(s.ip) in ipaddress.IPv4Network("10.244.2.0/24")
    assert await ping(s.netns_path, "10.244.2.1")


async def test_cleanup_all_removes_every_netns_veth_rule_and_the_bridge(node):
    net = node.network()
    await net.ensure_bridge("10.244.1.0/24")
    pods = [await net.setup_pod(node.sandbox_id(), f"p{i}", "default") for i in range(3)]

    await net.cleanup_all()
    assert await net.list_sandboxes() == []
    assert not any(p.netns_path.exists() for p in pods)
    assert not [n for n in await node.links() if n.startswith("veth")]
    assert node.bridge in await node.links()  # kept unless asked

    await net.cleanup_all(remove_bridge=True)
    assert node.bridge not in await node.links()
    assert "KUBELAB" not in await node.iptables_save()
    assert not [p for p in (node.state_dir / "ipam").iterdir() if p.name[0].isdigit()]


async def test_cleanup_keeps_the_rules_of_another_bridge(node):
    mine = node.network()
    await mine.ensure_bridge("10.244.1.0/24")
    # a second bridge with its own state dir in the same namespace
    other = PodNetwork(node.tmp / "other-state", bridge=f"kltesu{node.suffix}", runner=node.run)
    await other.ensure_bridge("10.244.2.0/24")
    await mine.cleanup_all(remove_bridge=True)
    rules = await node.iptables_save()
    assert "10.244.1.0/24" not in rules and f"kubelab:{node.bridge} " not in rules
    assert rules.count("MASQUERADE") == 1 and f"-o kltesu{node.suffix} " in rules
    await other.cleanup_all(remove_bridge=True)
    assert "KUBELAB" not in await node.iptables_save()


async def test_pods_set_up_concurrently_get_distinct_addresses(node):
    net = node.network()
    await net.ensure_bridge("10.244.1.0/24")
    ids = [node.sandbox_id() for _ in range(8)]
    statuses = await asyncio.gather(*(net.setup_pod(sid, f"p{i}", "default") for i, sid in enumerate(ids)))
    assert len({s.ip for s in statuses}) == 8
    assert [await net.status(sid) for sid in ids] == list(statuses)
    assert await ping(statuses[0].netns_path, statuses[-1].ip)


async def test_gc_tears_down_sandboxes_that_are_gone(node):
    net = node.network()
    await net.ensure_bridge("10.244.1.0/24")
    keep, drop = node.sandbox_id(), node.sandbox_id()
    k = await net.setup_pod(keep, "keep", "default")
    d = await net.setup_pod(drop, "drop", "default")
    assert await net.gc([keep]) == [drop]
    assert await net.list_sandboxes() == [keep]
    assert await net.status(keep) == k
    assert not d.netns_path.exists() and d.host_veth not in await node.links()


async def test_setup_repairs_and_teardown_survives_a_half_made_sandbox(node):
    net = node.network()
    await net.ensure_bridge("10.244.1.0/24")
    # a crash left a namespace file that was never mounted
    sid = node.sandbox_id()
    (NETNS_DIR / net.netns_name(sid)).touch()
    s = await net.setup_pod(sid, "web", "default")
    assert await ping(s.netns_path, s.gateway)

    # someone removed eth0 inside the namespace (its veth went with it): status says so,
    # setup_pod puts it back
    await run_checked(CommandRunner(prefix=["nsenter", f"--net={s.netns_path}"]), ["ip", "link", "delete", "eth0"])
    assert await net.status(sid) is None
    assert await net.setup_pod(sid, "web", "default") == s
    assert await ping(s.netns_path, s.gateway)

    # a crash after the address and the namespace, before the veth
    half = node.sandbox_id()
    net.ipam.allocate(half)
    await net.netns.ensure(net.netns_name(half))
    assert await net.status(half) is None
    assert half in await net.list_sandboxes()
    await net.teardown_pod(half)
    assert half not in await net.list_sandboxes()
    assert not (NETNS_DIR / net.netns_name(half)).exists()


async def test_a_private_netns_dir(node):
    """As in a lab VM or a test that may not use /var/run/netns: any directory works."""
    netns_dir = node.tmp / "netns"
    net = node.network(netns_dir=netns_dir)
    await net.ensure_bridge("10.244.1.0/24")
    ids = [node.sandbox_id(), node.sandbox_id()]
    a = await net.setup_pod(ids[0], "a", "default")
    b = await net.setup_pod(ids[1], "b", "default")
    assert a.netns_path.parent == netns_dir and _mounted(a.netns_path)
    assert not (NETNS_DIR / a.netns_name).exists()
    assert await ping(a.netns_path, b.ip)
    assert await node.network(netns_dir=netns_dir).status(ids[1]) == b
    await net.cleanup_all()
    assert list(netns_dir.iterdir()) == []


async def test_errors_name_the_command_and_what_it_said(node):
    net = node.network()
    with pytest.raises(NetworkError, match="ensure_bridge"):
        await net.setup_pod(node.sandbox_id(), "web", "default")

    with pytest.raises(NetworkError) as err:
        await run_checked(node.run, ["ip", "link", "show", "dev", "kltestnone0"])
    assert err.value.cmd == ["ip", "link", "show", "dev", "kltestnone0"]
    assert err.value.returncode != 0 and "does not exist" in err.value.stderr
    assert "`ip link show dev kltestnone0` failed" in str(err.value)

    await node.sh("ip", "link", "add", node.bridge, "type", "veth", "peer", "name", f"kltv{node.suffix}")
    with pytest.raises(NetworkError, match="exists but is not a bridge .kind veth."):
        await net.ensure_bridge("10.244.1.0/24")
    with pytest.raises(ValueError, match="not inside the cluster CIDR"):
        await net.ensure_bridge("10.99.1.0/24")
    with pytest.raises(ValueError, match="bridge name 'a-name-longer-than-15': must be 1-15 characters"):
        node.network(bridge="a-name-longer-than-15")
    with pytest.raises(ValueError, match=r"sandbox id '\.\./etc': must be"):
        await net.teardown_pod("../etc")


async def test_sandbox_ids_sharing_a_netns_name_are_refused(node):
    net = node.network()
    await net.ensure_bridge("10.244.1.0/24")
    sid = node.sandbox_id()
    s = await net.setup_pod(sid, "web", "default")
    with pytest.raises(NetworkError, match="already belongs to sandbox"):
        await net.setup_pod(sid[:12] + "f" * 52, "other", "default")
    assert await net.status(sid) == s
