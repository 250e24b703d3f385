"""Bootstrap end to end on a real `kubelab control-plane` (etcd, API server, scheduler and
controller manager as processes): `kubelab token`, TLS bootstrap through a CSR that the
controller manager approves and signs, the node certificate that comes out authenticating
as system:node:NAME, `kubelab get csr`, discovery's CA pin, and the tokencleaner.
"""
from __future__ import annotations

import re
import subprocess

import pytest

from kubelab import pki
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.bootstrap import discovery, tlsbootstrap
from kubelab.client.client import Client
from kubelab.errors import Conflict, Forbidden, NotFound

from .conftest import KUBELAB, free_port, wait_for

JOIN = re.compile(r"^kubelab join (127\.0\.0\.1:\d+) --token ([a-z0-9]{6}\.[a-z0-9]{16}) "
                  r"--discovery-token-ca-cert-hash (sha256:[0-9a-f]{64})$")


@pytest.fixture(scope="module")
def join(control_plane):
    """(address, token, pin) from `kubelab token create --print-join-command`."""
    out = control_plane.kubelab("token", "create", "--print-join-command", "--description", "for tests").stdout
    m = JOIN.match(out.strip())
    assert m, out
    return m.groups()


def test_print_join_command(control_plane, join):
    address, token, pin = join
    assert address == f"127.0.0.1:{control_plane.port}"
    ca = (control_plane.data_dir / "pki" / "ca.crt").read_bytes()
    assert pin == pki.ca_cert_hash(ca)
    listing = control_plane.kubelab("token", "list").stdout.splitlines()
    assert listing[0].split() == ["TOKEN", "TTL", "EXPIRES", "USAGES", "DESCRIPTION", "EXTRA", "GROUPS"]
    row = next(line for line in listing if line.startswith(token)).split()
    assert row[3:] == ["authentication,signing", "for", "tests", "system:bootstrappers:kubeadm:default-node-token"]
    assert re.fullmatch(r"2[34]h", row[1]) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row[2])


async def test_tls_bootstrap_end_to_end(control_plane, join, tmp_path):
    address, token, pin = join
    r = await tlsbootstrap.tlsbootstrap(address, token, "worker-7", pin, config_path=tmp_path / "kubelet.conf",
                                        timeout=60)
    assert pki.cert_identity(r.cert_pem) == ("system:node:worker-7", ["system:nodes"])
    # the node's own config now authenticates as the node: it may write its own Node, no other
    async with Client.connect(str(tmp_path / "kubelet.conf")) as node, control_plane.client() as admin:
        for name in ("worker-7", "worker-8"):
            n = v1.Node()
            n.metadata.name = name
            await admin.nodes().create(n)
        # the node lifecycle controller may write the new Node (taints) between get and update
        for _ in range(10):
            me = await node.nodes().get("worker-7")
            me.status.conditions.add(type="Ready", status="True")
            try:
                await node.nodes().update_status(me)
                break
            except Conflict:
                continue
        else:
            pytest.fail("worker-7's status update kept conflicting")
        other = await node.nodes().get("worker-8")
        with pytest.raises(Forbidden) as e:
            await node.nodes().update(other)
        assert e.value.message == ('nodes "worker-8" is forbidden: User "system:node:worker-7" cannot update '
                                   'resource "nodes" at the cluster scope')
        # nor a pod bound to another node
        pod = v1.Pod()
        pod.metadata.name, pod.metadata.namespace = "on-worker-8", "default"
        pod.spec.nodeName = "worker-8"
        pod.spec.containers.add(name="c", image="busybox")
        await admin.pods("default").create(pod)
        theirs = await node.pods("default").get("on-worker-8")
        theirs.status.phase = "Running"
        with pytest.raises(Forbidden) as e:
            await node.pods("default").update_status(theirs)
        assert e.value.message == ('pods "on-worker-8" is forbidden: User "system:node:worker-7" cannot update '
                                   'resource "pods/status" in the namespace "default"')
        await admin.pods("default").delete("on-worker-8", grace_period=0)
        csr = await admin.resource("certificatesigningrequests").get(r.csr_name)
        assert [c.type for c in csr.status.conditions] == ["Approved"]
        assert csr.status.conditions[0].reason == "AutoApproved"

    out = control_plane.kubelab("get", "csr").stdout.splitlines()
    assert out[0].split() == ["NAME", "AGE", "SIGNERNAME", "REQUESTOR", "REQUESTEDDURATION", "CONDITION"]
    row = next(line.split() for line in out if line.startswith(r.csr_name))
    assert row[2:] == ["kubernetes.io/kube-apiserver-client-kubelet", f"system:bootstrap:{token[:6]}", "<none>",
                       "Approved,Issued"]


async def test_csr_from_others_waits_for_an_admin(control_plane):
    """Only a node client request by a bootstrapper is approved automatically."""
    async with control_plane.client() as admin:
        # a well-formed node request, but made by the admin, not by a bootstrap token or that node
        plain = tlsbootstrap.node_csr("by-admin", pki.generate_key())
        plain.metadata.name = "admin-node"
        await admin.resource("certificatesigningrequests").create(plain)
        csr = tlsbootstrap.node_csr("by-admin", pki.generate_key())
        csr.metadata.name = "admin-made"
        csr.spec.request = pki.create_csr(pki.generate_key(), "system:node:by-admin", ["system:masters"])
        await admin.resource("certificatesigningrequests").create(csr)
        # a request that is auto-approved, made after it, is signed: so the controllers saw both
        ok = tlsbootstrap.node_csr("signed-one", pki.generate_key())
        ok.metadata.name = "marker"
        async with Client.from_config(_token_config(control_plane, await _new_token(control_plane))) as boot:
            await boot.resource("certificatesigningrequests").create(ok)

        async def signed():
            return (await admin.resource("certificatesigningrequests").get("marker")).status.certificate
        await wait_for(signed, 60, what="the marker CSR signed")
        for name in ("admin-node", "admin-made"):
            held = await admin.resource("certificatesigningrequests").get(name)
            assert not held.status.conditions and not held.status.certificate, name
        # an admin approves it: the signer refuses O=system:masters and says why
        held.status.conditions.add(type="Approved", status="True", reason="ByHand")
        await admin.resource("certificatesigningrequests").update_status(held)

        async def failed():
            c = await admin.resource("certificatesigningrequests").get("admin-made")
            return next((x for x in c.status.conditions if x.type == "Failed"), None)
        cond = await wait_for(failed, 60, what="admin-made Failed")
        assert cond.reason == "SignerValidationFailure" and "O ['system:masters']" in cond.message


async def _new_token(cp, *args) -> str:
    return cp.kubelab("token", "create", *args).stdout.strip()


def _token_config(cp, token: str):
    from kubelab.client.config import ClientConfig
    return ClientConfig(server=f"127.0.0.1:{cp.port}", ca_pem=(cp.data_dir / "pki" / "ca.crt").read_bytes(),
                        token=token)


async def test_discovery_errors(control_plane, join):
    address, token, pin = join
    server, ca = await discovery.discover(address, pin)
    assert server == address and pki.ca_cert_hash(ca) == pin
    wrong = "sha256:" + "0" * 64
    with pytest.raises(discovery.CAHashMismatch) as e:
        await discovery.discover(address, wrong)
    assert f"is {pin}, not the expected {wrong}" in str(e.value)
    with pytest.raises(discovery.BootstrapError, match="expected sha256:<64 hex digits>"):
        await discovery.discover(address, "sha256:abc")
    with pytest.raises(discovery.MasterUnreachable, match=f"cannot reach the API server at 127.0.0.1:"):
        await discovery.discover(f"127.0.0.1:{free_port()}", pin)
    with pytest.raises(discovery.UnknownToken, match='bootstrap token "zzzzzz" is unknown'):
        await tlsbootstrap.tlsbootstrap(address, "zzzzzz.0123456789abcdef", "w", pin, timeout=10)
    with pytest.raises(discovery.BootstrapError, match="is not of the form"):
        await tlsbootstrap.tlsbootstrap(address, "nope", "w", pin, timeout=10)


async def test_token_delete_and_tokencleaner(control_plane):
    cp = control_plane
    kept = await _new_token(cp, "--ttl", "0")
    assert cp.kubelab("token", "delete", kept.split(".")[0]).stdout.strip() == \
        f'bootstrap token "{kept.split(".")[0]}" deleted'
    r = cp.kubelab("token", "delete", kept.split(".")[0], check=False)
    assert r.returncode == 1 and f'bootstrap token "{kept.split(".")[0]}" not found' in r.stderr
    bad = cp.kubelab("token", "create", "--ttl", "soon", check=False)
    assert bad.returncode == 1 and 'invalid --ttl "soon"' in bad.stderr

    short = await _new_token(cp, "--ttl", "2s")
    async with cp.client() as admin:
        secrets = admin.resource("secrets", "kube-system")
        assert (await secrets.get(f"bootstrap-token-{short[:6]}")).data["token-id"] == short[:6].encode()

        async def gone():
            try:
                await secrets.get(f"bootstrap-token-{short[:6]}")
            except NotFound:
                return True
            return False
        await wait_for(gone, 60, what="the tokencleaner deleting the expired token")


def test_token_verbs_take_config_before_or_after_the_verb(control_plane, tmp_path):
    """`--config` given before `token`'s verb is not undone by the verb's own defaults."""
    env = {k: v for k, v in control_plane.env.items() if k != "KUBELAB_CONFIG"}
    env["HOME"] = str(tmp_path)  # no ~/.kubelab/config to fall back on
    admin = str(control_plane.config)
    control_plane.kubelab("token", "create", "--description", "config-flag")
    for argv in (["--config", admin, "token", "list"], ["token", "--config", admin, "list"],
                 ["token", "list", "--config", admin]):
        r = subprocess.run(KUBELAB + argv, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (argv, r.stderr)
        assert r.stdout.split()[:2] == ["TOKEN", "TTL"] and "config-flag" in r.stdout
