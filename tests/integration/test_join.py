"""`kubelab join` against a real `kubelab control-plane` (etcd, API server, scheduler and
controller manager as processes): the whole join up to the node Ready, and every way it is
refused, each with its one-line error and nothing left behind.

No node daemon is started here (other engineers' kubelets run on this host). Refusals that
stop before the TLS bootstrap whatever happens (flags, preflight, an unreachable master, a
token the API server refuses) run the real CLI with --etc-dir/--var-dir in a temp dir; the
two whose regression would let join go on to start daemons (a wrong CA hash, a name held by
a live node) run kubeadm.join.join() with a start_node that fails the test. The successful
join runs join() with start_node replaced by the node's files written for real plus the
kubelet's first act (register the Node Ready with the kubelet.conf join wrote) done by the test.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import re
import stat

import pytest

from kubeadm import join as kjoin
from kubeadm import node as knode
from kubelab import meta, pki
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.bootstrap import tokens
from kubelab.client.client import Client
from kubelab.client.config import ClientConfig
from kubelab.errors import Conflict, Forbidden

from .conftest import KUBELAB, free_port

JOIN = re.compile(r"^kubelab join (127\.0\.0\.1:\d+) --token ([a-z0-9]{6}\.[a-z0-9]{16}) "
                  r"--discovery-token-ca-cert-hash (sha256:[0-9a-f]{64})$")


@pytest.fixture(scope="module")
def join_line(control_plane):
    """(address, token, pin) from `kubelab token create --print-join-command`."""
    out = control_plane.kubelab("token", "create", "--print-join-command").stdout
    m = JOIN.match(out.strip())
    assert m, out
    return m.groups()


@pytest.fixture(scope="module")
def underlay():
    """(iface, ip): a real address of this host, so preflight's node IP choice passes anywhere."""
    iface, ip = knode.host_addresses()[0]
    return iface, ip


@pytest.fixture
def root(tmp_path):
    """A temp root for --etc-dir/--var-dir that must be empty again after a refused join."""
    d = tmp_path / "node"
    d.mkdir()
    return d


def run_join(cp, root, underlay, *args, node_name="joiner"):
    iface, ip = underlay
    r = cp.kubelab("join", *args, "--node-name", node_name, "--iface", iface, "--node-ip", ip,
                   "--etc-dir", str(root / "etc"), "--var-dir", str(root / "var"), check=False)
    return r


def refused(r, root) -> str:
    """The one error line of a refused join; nothing left in its dirs."""
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert not list(root.rglob("*")), list(root.rglob("*"))
    return lines[0]


async def set_ready(client, name: str, status: str, **fields) -> None:
    """The Node's Ready condition, retried on Conflict: the controllers (node IPAM, node
    lifecycle) write a new Node soon after it is created."""
    for _ in range(20):
        n = await client.nodes().get(name)
        del n.status.conditions[:]
        n.status.conditions.add(type="Ready", status=status, reason="Test")
        for k, v in fields.items():
            getattr(n.status, k).add(**v)
        try:
            await client.nodes().update_status(n)
            return
        except Conflict:
            continue
    pytest.fail(f"the status update of {name} kept conflicting")


async def _node(admin, name: str, *, ready: str | None, renewed: dt.datetime | None, duration: int = 3600):
    if renewed is not None:
        lease = v1.Lease()
        lease.metadata.name, lease.metadata.namespace = name, "kube-node-lease"
        lease.spec.holderIdentity = name
        lease.spec.leaseDurationSeconds = duration
        lease.spec.renewTime = meta.rfc3339_micro(renewed)
        await admin.leases("kube-node-lease").create(lease)
    n = v1.Node()
    n.metadata.name = name
    await admin.nodes().create(n)
    if ready is not None:
        await set_ready(admin, name, ready)


# ---- the successful join

async def test_join_end_to_end(control_plane, join_line, tmp_path, capsys):
    address, token, pin = join_line
    etc, var = tmp_path / "etc", tmp_path / "var"
    started: list[knode.NodeSpec] = []
    registered: list[asyncio.Task] = []

    async def kubelet_registers(spec: knode.NodeSpec) -> None:
        # the kubelet's first act, with the credentials join handed it
        async with Client.connect(str(spec.kubelet_conf)) as me:
            n = v1.Node()
            n.metadata.name = spec.node_name
            await me.nodes().create(n)
            await set_ready(me, spec.node_name, "True", addresses={"type": "InternalIP", "address": spec.node_ip})

    def start_node(spec, say) -> None:
        knode.write_node_files(spec)  # the real overlay manifest and flags files; no daemon
        started.append(spec)
        registered.append(asyncio.get_running_loop().create_task(kubelet_registers(spec)))

    ops = kjoin.NodeOps(start_node, knode.wait_node_ready, lambda spec: pytest.fail("stop_node on success"),
                        lambda iface, ip: ("eth-test", "192.0.2.7"))
    said: list[str] = []
    # the pod network as init records it, kubeadm's way
    cm = v1.ConfigMap()
    cm.metadata.name, cm.metadata.namespace = "kubeadm-config", "kube-system"
    cm.data["ClusterConfiguration"] = "networking:\n  podSubnet: 10.200.0.0/16\n  serviceSubnet: 10.96.0.0/12\n"
    async with control_plane.client() as admin:
        await admin.resource("configmaps", "kube-system").create(cm)
        try:
            r = await kjoin.join(kjoin.JoinOptions(address, token, pin, node_name="joined-1", etc_dir=etc,
                                                   var_dir=var, timeout=120), ops=ops, say=said.append)
        finally:
            await admin.resource("configmaps", "kube-system").delete("kubeadm-config")
    await registered[0]
    with capsys.disabled():
        print(f"\n[measure] join's bootstrap (discovery, name check, CSR approved and signed) against "
              f"the control-plane fixture: {r.bootstrap_seconds:.3f}s")

    assert next(line.split("]")[0] + "]" for line in said if line.startswith("[")) == "[preflight]"
    assert "[kubelet-start] Performing the TLS Bootstrap" in said
    assert said[-1] == '[kubelet-start] Waiting for the node "joined-1" to become Ready. This can take up to 2m0s'
    conf = etc / "kubelet.conf"
    assert r.kubelet_conf == conf and stat.S_IMODE(conf.stat().st_mode) == 0o600
    ca = (control_plane.data_dir / "pki" / "ca.crt").read_bytes()
    assert (etc / "pki" / "ca.crt").read_bytes() == ca
    [spec] = started
    assert (spec.node_name, spec.node_ip, spec.iface, spec.kubelet_conf, spec.etc_dir, spec.var_dir) == \
        ("joined-1", "192.0.2.7", "eth-test", conf, etc, var)
    assert spec.cluster_cidr == "10.200.0.0/16"
    assert (etc / "manifests" / "kube-overlay.yaml").exists()
    kubelet_args = (var / "kubelab-kubelet.env").read_text()
    assert f"--config={conf}" in kubelet_args and "--node-name=joined-1" in kubelet_args
    assert "token" not in conf.read_text()  # the token is used for the bootstrap only

    async with Client.connect(str(conf)) as me, control_plane.client() as admin:
        cfg_cert = pki.cert_identity((await _identity(conf)).cert_pem)
        assert cfg_cert == ("system:node:joined-1", ["system:nodes"])
        csr = await admin.resource("certificatesigningrequests").get(r.csr_name)
        assert csr.spec.username == f"system:bootstrap:{token[:6]}"
        # a node identity may change only what is its own, refused in Kubernetes' words
        other = v1.Node()
        other.metadata.name = "someone-else"
        await admin.nodes().create(other)
        for name, node_name in (("theirs", "someone-else"), ("mine", "joined-1")):
            p = v1.Pod()
            p.metadata.name, p.metadata.namespace = name, "default"
            p.spec.nodeName = node_name
            p.spec.containers.add(name="c", image="busybox")
            await admin.pods("default").create(p)
        user = 'User "system:node:joined-1"'
        theirs = await me.pods("default").get("theirs")
        theirs.metadata.labels["touched"] = "yes"
        with pytest.raises(Forbidden) as e:
            await me.pods("default").update(theirs)
        assert e.value.message == f'pods "theirs" is forbidden: {user} cannot update resource "pods" in the namespace "default"'
        theirs.status.phase = "Failed"
        with pytest.raises(Forbidden) as e:
            await me.pods("default").update_status(theirs)
        assert e.value.message == (f'pods "theirs" is forbidden: {user} cannot update resource "pods/status" '
                                   'in the namespace "default"')
        with pytest.raises(Forbidden) as e:
            await me.pods("default").delete("theirs")
        assert e.value.message == f'pods "theirs" is forbidden: {user} cannot delete resource "pods" in the namespace "default"'
        other = await me.nodes().get("someone-else")
        other.metadata.labels["touched"] = "yes"
        with pytest.raises(Forbidden) as e:
            await me.nodes().update(other)
        assert e.value.message == (f'nodes "someone-else" is forbidden: {user} cannot update resource "nodes" '
                                   "at the cluster scope")
        # ...while its own pod is its to change
        mine = await me.pods("default").get("mine")
        mine.status.phase = "Running"
        assert (await me.pods("default").update_status(mine)).status.phase == "Running"
        for name in ("theirs", "mine"):
            await admin.pods("default").delete(name, grace_period=0)


async def _identity(conf):
    from kubelab.client.config import load_config
    return load_config(str(conf))


async def test_a_failure_after_the_bootstrap_takes_back_what_join_wrote(control_plane, join_line, root):
    """The kubelet never gets Ready: kubelet.conf, ca.crt, the manifest, the flags files (so the
    services stop) and the dirs join made are gone again."""
    address, token, pin = join_line
    stopped, seen = [], []
    # a CA left by an earlier cluster (a reset that did not finish) is put back as it was
    old_ca = root / "etc" / "pki" / "ca.crt"
    old_ca.parent.mkdir(parents=True)
    old_ca.write_bytes(b"the old CA\n")

    def start_node(spec, say) -> None:
        seen.extend(knode.write_node_files(spec))

    async def never_ready(client, name, timeout):
        assert (root / "etc" / "kubelet.conf").exists()
        raise TimeoutError(f'node "{name}" not Ready after {timeout:.0f}s: not registered yet')

    async def stop_node(spec):
        stopped.append(spec)
    ops = kjoin.NodeOps(start_node, never_ready, stop_node, lambda iface, ip: ("eth-test", "192.0.2.8"))
    with pytest.raises(kjoin.JoinError) as e:
        await kjoin.join(kjoin.JoinOptions(address, token, pin, node_name="never-ready", etc_dir=root / "etc",
                                           var_dir=root / "var", timeout=60), ops=ops, say=lambda m: None)
    assert e.value.line() == ('error execution phase kubelet-start: the node "never-ready" did not become Ready '
                              'in 1m0s: node "never-ready" not Ready after 60s: not registered yet; see '
                              f'{root}/var/log/kubelab-kubelet.log')
    assert len(seen) == 3 and [s.node_name for s in stopped] == ["never-ready"]
    assert sorted(root.rglob("*")) == [root / "etc", old_ca.parent, old_ca]
    assert old_ca.read_bytes() == b"the old CA\n"


# ---- refusals, through the CLI

async def refused_join(root, address, token, pin, node_name="joiner") -> str:
    """A refusal that, were it to regress, would go on to start node daemons on this host:
    through join() with a start_node that fails the test instead."""
    def no(*_):
        pytest.fail("join went on past the refusal")
    ops = kjoin.NodeOps(no, no, no, lambda iface, ip: ("eth-test", "192.0.2.9"))
    with pytest.raises(kjoin.JoinError) as e:
        await kjoin.join(kjoin.JoinOptions(address, token, pin, node_name=node_name, etc_dir=root / "etc",
                                           var_dir=root / "var", timeout=60), ops=ops, say=lambda m: None)
    assert not list(root.rglob("*")), list(root.rglob("*"))
    return e.value.line()


async def test_wrong_ca_hash(control_plane, join_line, root):
    address, token, pin = join_line
    wrong = "sha256:" + "ab" * 32
    line = await refused_join(root, address, token, wrong)
    assert line == (f"error execution phase discovery: the cluster CA's public key hash is {pin}, not the expected "
                    f"{wrong}: this is not the cluster you meant, or the hash is mistyped (`kubelab token create "
                    "--print-join-command` on the control plane prints it)")


def test_unknown_token(control_plane, join_line, root, underlay):
    address, _, pin = join_line
    line = refused(run_join(control_plane, root, underlay, address, "--token", "zzzzzz.0123456789abcdef",
                            "--discovery-token-ca-cert-hash", pin), root)
    assert line == ('error execution phase kubelet-start: Unauthorized: bootstrap token "zzzzzz" is unknown: '
                    "check the --token value (`kubelab token list` on the control plane)")


async def test_expired_token(control_plane, join_line, root, underlay):
    """An expired token Secret held by a finalizer: the tokencleaner's delete leaves it (with a
    deletionTimestamp) for the authenticator to refuse, whether it ran already or not."""
    address, _, pin = join_line
    t = tokens.new_token(ttl=dt.timedelta(hours=1), now=meta.now() - dt.timedelta(hours=2))
    s = tokens.to_secret(t)
    s.metadata.finalizers.append("kubelab.test/keep")
    async with control_plane.client() as admin:
        secrets = admin.resource("secrets", "kube-system")
        await secrets.create(s)
        try:
            line = refused(await asyncio.to_thread(run_join, control_plane, root, underlay, address, "--token",
                                                   str(t), "--discovery-token-ca-cert-hash", pin), root)
        finally:
            held = await secrets.get(s.metadata.name)
            del held.metadata.finalizers[:]
            await secrets.update(held)
    assert line == (f'error execution phase kubelet-start: Unauthorized: bootstrap token "{t.id}" has expired '
                    f"({t.expiration}): create a new one on the control plane with `kubelab token create`")


def test_unreachable_master(control_plane, join_line, root, underlay):
    _, token, pin = join_line
    port = free_port()
    line = refused(run_join(control_plane, root, underlay, f"127.0.0.1:{port}", "--token", token,
                            "--discovery-token-ca-cert-hash", pin), root)
    assert line == (f"error execution phase discovery: cannot reach the API server at 127.0.0.1:{port}: "
                    "[Errno 111] Connection refused; check the address, that the control plane runs, and that "
                    "the port is open")


async def test_a_name_held_by_a_live_node(control_plane, join_line, root):
    """Checked with the bootstrap token before any certificate is asked for: a Node Ready, or
    one whose Lease is renewed within its duration, holds its name."""
    address, token, pin = join_line
    async with control_plane.client() as admin:
        await _node(admin, "held-ready", ready="True", renewed=meta.now())
        await _node(admin, "held-lease", ready=None, renewed=meta.now())
    before = await _csr_names(control_plane)
    lines = []
    for name in ("held-ready", "held-lease"):
        lines.append(await refused_join(root, address, token, pin, node_name=name))
    assert lines[0] == ('error execution phase kubelet-start: a Node with name "held-ready" and status "Ready" '
                        "already exists in the cluster. You must delete the existing Node or change the name of "
                        "this new joining Node (--node-name)")
    assert re.fullmatch(r'error execution phase kubelet-start: a Node with name "held-lease" whose Lease was '
                        r"renewed \d+s ago \(duration 3600s\) already exists in the cluster\. You must delete the "
                        r"existing Node or change the name of this new joining Node \(--node-name\)", lines[1])
    assert await _csr_names(control_plane) == before  # refused before any signing request


async def test_a_name_left_by_a_dead_node_is_free_and_the_token_reads_no_more(control_plane, join_line):
    address, token, _pin = join_line
    async with control_plane.client() as admin:
        await _node(admin, "gone", ready="Unknown", renewed=meta.now() - dt.timedelta(hours=1), duration=40)
    ca = (control_plane.data_dir / "pki" / "ca.crt").read_bytes()
    async with Client.from_config(ClientConfig(server=address, ca_pem=ca, token=token)) as boot:
        await kjoin.check_node_name(boot, "gone")
        await kjoin.check_node_name(boot, "never-was")
        # the token may get one Node and one node Lease, nothing more
        user = f'User "system:bootstrap:{token[:6]}"'
        with pytest.raises(Forbidden) as e:
            await boot.nodes().list()
        assert e.value.message == f'nodes is forbidden: {user} cannot list resource "nodes" at the cluster scope'
        n = await boot.nodes().get("gone")
        with pytest.raises(Forbidden) as e:
            await boot.nodes().update(n)
        assert e.value.message == f'nodes "gone" is forbidden: {user} cannot update resource "nodes" at the cluster scope'
        with pytest.raises(Forbidden) as e:
            await boot.leases("kube-system").get("kube-scheduler")
        assert e.value.message == (f'leases.coordination.k8s.io "kube-scheduler" is forbidden: {user} cannot get '
                                   'resource "leases" in API group "coordination.k8s.io" in the namespace "kube-system"')


async def _csr_names(cp) -> set[str]:
    async with cp.client() as admin:
        return {c.metadata.name for c in (await admin.resource("certificatesigningrequests").list()).items}


def test_already_joined(control_plane, join_line, root, underlay):
    address, token, _ = join_line
    conf = root / "etc" / "kubelet.conf"
    conf.parent.mkdir()
    conf.write_text("kept\n")
    # a pin that discovery would refuse: were preflight to let it through, no daemon starts
    r = run_join(control_plane, root, underlay, address, "--token", token, "--discovery-token-ca-cert-hash", GOOD_HASH)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.strip() == (f"error execution phase preflight: [ERROR FileAvailable-{str(conf).strip('/').replace('/', '-')}]: "
                                f"{conf} already exists: this node has already joined a cluster; run \"kubelab reset\" first")
    assert conf.read_text() == "kept\n" and sorted(root.rglob("*")) == [conf.parent, conf]


GOOD_TOKEN, GOOD_HASH = "abcdef.0123456789abcdef", "sha256:" + "0" * 64


@pytest.mark.parametrize("args, line", [
    (["127.0.0.1:6443", "--token", "ABCDEF.0123456789abcdef", "--discovery-token-ca-cert-hash", GOOD_HASH],
     'error: invalid --token: the token "ABCDEF.0123456789abcdef" is not of the form "[a-z0-9]{6}.[a-z0-9]{16}"'),
    (["127.0.0.1:6443", "--discovery-token-ca-cert-hash", GOOD_HASH],
     "error: --token is required (`kubelab token create` on the control plane makes one)"),
    (["127.0.0.1:6443", "--token", GOOD_TOKEN, "--discovery-token-ca-cert-hash", "sha256:abc"],
     ('error: invalid --discovery-token-ca-cert-hash "sha256:abc": expected sha256:<64 hex digits>, the SHA-256 '
     "of the CA's public key")),
    (["127.0.0.1:6443", "--token", GOOD_TOKEN],
     ("error: --discovery-token-ca-cert-hash is required: it pins the cluster CA (`kubelab token create "
     "--print-join-command` on the control plane prints it)")),
    (["https://127.0.0.1:6443", "--token", GOOD_TOKEN, "--discovery-token-ca-cert-hash", GOOD_HASH],
     'error: invalid API server endpoint "https://127.0.0.1:6443": expected HOST:PORT, such as 192.168.56.10:6443'),
    (["127.0.0.1", "--token", GOOD_TOKEN, "--discovery-token-ca-cert-hash", GOOD_HASH],
     'error: invalid API server endpoint "127.0.0.1": expected HOST:PORT, such as 192.168.56.10:6443'),
    (["127.0.0.1:70000", "--token", GOOD_TOKEN, "--discovery-token-ca-cert-hash", GOOD_HASH],
     'error: invalid API server endpoint "127.0.0.1:70000": expected HOST:PORT, such as 192.168.56.10:6443'),
    (["127.0.0.1:6443", "--token", GOOD_TOKEN, "--discovery-token-ca-cert-hash", GOOD_HASH, "--timeout", "soon"],
     'error: invalid --timeout "soon": use a duration such as 4m0s'),
    (["--token", GOOD_TOKEN, "--discovery-token-ca-cert-hash", GOOD_HASH],
     ("error: the API server endpoint is required: kubelab join MASTER:6443 --token ... (`kubelab token create "
     "--print-join-command` on the control plane prints the command)")),
], ids=["token-format", "token-missing", "hash-format", "hash-missing", "endpoint-scheme", "endpoint-no-port",
        "endpoint-port-range", "timeout", "endpoint-missing"])
def test_invalid_flags(control_plane, root, underlay, args, line):
    assert refused(run_join(control_plane, root, underlay, *args), root) == line


def test_invalid_node_name_and_node_ip(control_plane, root, underlay):
    base = ["127.0.0.1:6443", "--token", GOOD_TOKEN, "--discovery-token-ca-cert-hash", GOOD_HASH]
    line = refused(run_join(control_plane, root, underlay, *base, node_name="Worker_1"), root)
    assert line == ('error: invalid --node-name "Worker_1": a lowercase RFC 1123 subdomain must consist of lower '
                    "case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")
    r = control_plane.kubelab("join", *base, "--node-name", "w1", "--node-ip", "192.0.2.250",
                              "--etc-dir", str(root / "etc"), "--var-dir", str(root / "var"), check=False)
    assert refused(r, root).startswith("error execution phase preflight: --node-ip 192.0.2.250: no interface of "
                                       "this host has that address")


async def test_long_waits_show_progress():
    """The TLS bootstrap and the wait for Ready say that they still wait (no daemon, no server)."""
    said, go_on = [], asyncio.Event()

    async def slow():
        await go_on.wait()
        return 7

    def say(msg):
        said.append(msg)
        go_on.set()  # the first progress line lets it finish
    # a deadline only so that a broken with_progress fails instead of hanging
    assert await asyncio.wait_for(kjoin.with_progress(slow(), say, "[kubelet-start] still waiting", every=0.01),
                                  60) == 7
    assert len(said) == 1 and re.fullmatch(r"\[kubelet-start\] still waiting \(\d+s\)", said[0])


def test_preflight_reports_every_missing_tool_at_once(control_plane, join_line, root, underlay):
    """With only unshare on PATH: runc, conmon, ip, iptables and the VXLAN probe fail, one line."""
    import shutil
    import subprocess
    address, token, _ = join_line
    iface, ip = underlay
    bin_dir = root.parent / "bin"
    bin_dir.mkdir()
    (bin_dir / "unshare").symlink_to(shutil.which("unshare"))
    r = subprocess.run([*KUBELAB, "join", address, "--token", token, "--discovery-token-ca-cert-hash", GOOD_HASH,
                        "--node-name", "w", "--iface", iface, "--node-ip", ip, "--etc-dir", str(root / "etc"),
                        "--var-dir", str(root / "var")],
                       env=dict(control_plane.env, PATH=str(bin_dir)), capture_output=True, text=True,
                       timeout=60, check=False)
    line = refused(r, root)
    assert line.startswith("error execution phase preflight: [ERROR FileExisting-runc]: runc not found in system "
                           "path (Debian package runc) [ERROR FileExisting-conmon]: conmon not found in system path")
    assert "[ERROR FileExisting-iptables]" in line and "[ERROR SystemVerification]" in line


def test_durations_read_as_kubeadm_prints_them():
    assert [kjoin._duration(s) for s in (240, 90, 45)] == ["4m0s", "1m30s", "45s"]
