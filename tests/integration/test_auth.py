"""Authentication and authorization against a real API server on real etcd: who may do what
(admin, node, bootstrap token, anonymous), with Kubernetes' exact Forbidden wording, and
bootstrap token authentication (valid, unknown, wrong secret, expired, not for auth).

The API server runs in process with no controller manager, so an expired token Secret stays
in etcd (no tokencleaner) and the authenticator itself must refuse it.
"""
from __future__ import annotations

import datetime as dt

import grpc
import pytest

from kubelab import meta, pki
from kubelab.api.v1 import api_pb2, objects_pb2 as v1
from kubelab.bootstrap import tokens
from kubelab.client.client import Client
from kubelab.client.config import ClientConfig
from kubelab.errors import Forbidden, NotFound, Unauthorized

from .conftest import admin_config


def _client(api, tmp_path, cn: str, orgs=()) -> Client:
    path = admin_config(api.server.opts.pki_dir, api.address, tmp_path / f"{cn.replace(':', '_')}.conf", cn, orgs)
    return Client.connect(str(path))


def _token_client(api, token: str = "") -> Client:
    ca = (api.server.opts.pki_dir / "ca.crt").read_bytes()
    return Client.from_config(ClientConfig(server=api.address, ca_pem=ca, token=token))


def _pod(name: str, node: str) -> v1.Pod:
    p = v1.Pod()
    p.metadata.name, p.metadata.namespace = name, "default"
    p.spec.nodeName = node
    p.spec.containers.add(name="c", image="busybox")
    return p


async def _token(api, *, ttl=dt.timedelta(hours=1), usages=("authentication", "signing"), now=None) -> str:
    t = tokens.new_token(ttl=ttl, usages=usages, now=now)
    await api.client.resource("secrets", "kube-system").create(tokens.to_secret(t))
    return str(t)


def _csr(cn="system:node:w9", orgs=("system:nodes",)) -> v1.CertificateSigningRequest:
    c = v1.CertificateSigningRequest()
    c.metadata.generateName = "csr-"
    c.spec.request = pki.create_csr(pki.generate_key(), cn, list(orgs))
    c.spec.signerName = "kubernetes.io/kube-apiserver-client-kubelet"
    c.spec.usages.extend(["digital signature", "client auth"])
    return c


async def test_node_may_change_only_its_own(api, tmp_path):
    admin = api.client
    for name in ("worker1", "worker2"):
        n = v1.Node()
        n.metadata.name = name
        await admin.nodes().create(n)
    await admin.pods("default").create(_pod("mine", "worker1"))
    await admin.pods("default").create(_pod("x", "worker2"))

    async with _client(api, tmp_path, "system:node:worker1", ("system:nodes",)) as node:
        # reads are allowed, of anything but Secrets
        assert {p.metadata.name for p in (await node.pods("default").list()).items} == {"mine", "x"}
        assert (await node.nodes().get("worker2")).metadata.name == "worker2"
        # its own Node and its status
        me = await node.nodes().get("worker1")
        me.metadata.labels["seen"] = "yes"
        me = await node.nodes().update(me)
        me.status.conditions.add(type="Ready", status="True")
        await node.nodes().update_status(me)
        # its own Lease
        lease = v1.Lease()
        lease.metadata.name, lease.metadata.namespace = "worker1", "kube-node-lease"
        lease.spec.holderIdentity = "worker1"
        await node.leases("kube-node-lease").create(lease)
        # the status of a pod bound to it, and deleting it
        mine = await node.pods("default").get("mine")
        mine.status.phase = "Running"
        assert (await node.pods("default").update_status(mine)).status.phase == "Running"
        # events
        ev = v1.Event()
        ev.metadata.name, ev.metadata.namespace = "mine.1", "default"
        ev.involvedObject.kind, ev.involvedObject.name = "Pod", "mine"
        await node.events("default").create(ev)
        # a mirror pod bound to itself
        await node.pods("default").create(_pod("static-worker1", "worker1"))

        user = 'User "system:node:worker1"'
        x = await node.pods("default").get("x")
        with pytest.raises(Forbidden) as e:
            await node.pods("default").update(x)
        assert e.value.message == f'pods "x" is forbidden: {user} cannot update resource "pods" in the namespace "default"'
        with pytest.raises(Forbidden) as e:
            await node.pods("default").update_status(x)
        assert e.value.message == (f'pods "x" is forbidden: {user} cannot update resource "pods/status" '
                                   'in the namespace "default"')
        with pytest.raises(Forbidden) as e:
            await node.pods("default").delete("x")
        assert e.value.message == f'pods "x" is forbidden: {user} cannot delete resource "pods" in the namespace "default"'
        with pytest.raises(Forbidden) as e:
            await node.pods("default").create(_pod("elsewhere", "worker2"))
        assert e.value.message == (f'pods "elsewhere" is forbidden: {user} cannot create resource "pods" '
                                   'in the namespace "default"')
        other = await node.nodes().get("worker2")
        with pytest.raises(Forbidden) as e:
            await node.nodes().update_status(other)
        assert e.value.message == (f'nodes "worker2" is forbidden: {user} cannot update resource "nodes/status" '
                                   'at the cluster scope')
        lease.metadata.name = "worker2"
        with pytest.raises(Forbidden) as e:
            await node.leases("kube-node-lease").create(lease)
        assert e.value.message == (f'leases.coordination.k8s.io "worker2" is forbidden: {user} cannot create '
                                   'resource "leases" in API group "coordination.k8s.io" in the namespace "kube-node-lease"')
        with pytest.raises(Forbidden) as e:
            await node.resource("secrets", "kube-system").list()
        assert e.value.message == f'secrets is forbidden: {user} cannot list resource "secrets" in the namespace "kube-system"'
        with pytest.raises(Forbidden) as e:
            async for _ in node.resource("secrets", "").watch():
                break
        assert e.value.message == f'secrets is forbidden: {user} cannot watch resource "secrets" at the cluster scope'
        with pytest.raises(Forbidden) as e:
            await node.bind("default", "x", "worker1")
        assert e.value.message == (f'pods "x" is forbidden: {user} cannot create resource "pods/binding" '
                                   'in the namespace "default"')
        call = node.pod_exec(iter([api_pb2.ExecRequest(start=api_pb2.ExecStart(
            namespace="default", name="mine", command=["true"]))]))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in call:
                pass
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert e.value.details() == (f'pods "mine" is forbidden: {user} cannot create resource "pods/exec" '
                                     'in the namespace "default"')
        ns = v1.Namespace()
        ns.metadata.name = "nodes-may-not"
        with pytest.raises(Forbidden) as e:
            await node.namespaces().create(ns)
        assert e.value.message == (f'namespaces "nodes-may-not" is forbidden: {user} cannot create resource '
                                   '"namespaces" at the cluster scope')
        # deleting its own pod is allowed
        await node.pods("default").delete("mine", grace_period=0)

    # a certificate with the node name but not the group is no node: nothing but nothing
    async with _client(api, tmp_path, "system:node:worker1") as impostor:
        with pytest.raises(Forbidden) as e:
            await impostor.pods("default").list()
        assert e.value.message == ('pods is forbidden: User "system:node:worker1" cannot list resource "pods" '
                                   'in the namespace "default"')


async def test_bootstrap_token_may_read_cluster_info_and_create_a_csr(api):
    token = await _token(api)
    tid = token.split(".")[0]
    async with _token_client(api, token) as c:
        cm = await c.resource("configmaps", "kube-public").get("cluster-info")
        assert "certificate-authority-data" in cm.data["kubeconfig"]
        req = _csr()
        req.spec.username, req.spec.groups[:] = "kubernetes-admin", ["system:masters"]  # lies, replaced
        made = await c.resource("certificatesigningrequests").create(req)
        assert made.spec.username == f"system:bootstrap:{tid}"
        assert list(made.spec.groups) == ["system:bootstrappers", tokens.DEFAULT_GROUPS, "system:authenticated"]
        assert (await c.resource("certificatesigningrequests").get(made.metadata.name)).metadata.uid == made.metadata.uid

        user = f'User "system:bootstrap:{tid}"'
        with pytest.raises(Forbidden) as e:
            await c.pods("default").list()
        assert e.value.message == f'pods is forbidden: {user} cannot list resource "pods" in the namespace "default"'
        with pytest.raises(Forbidden) as e:
            await c.resource("secrets", "kube-system").get(f"bootstrap-token-{tid}")
        assert e.value.message == (f'secrets "bootstrap-token-{tid}" is forbidden: {user} cannot get resource '
                                   '"secrets" in the namespace "kube-system"')
        with pytest.raises(Forbidden) as e:
            await c.resource("configmaps", "kube-public").get("other")
        assert e.value.message == (f'configmaps "other" is forbidden: {user} cannot get resource "configmaps" '
                                   'in the namespace "kube-public"')
        made.status.conditions.add(type="Approved", status="True", reason="SelfApproved")
        with pytest.raises(Forbidden) as e:
            await c.resource("certificatesigningrequests").update_status(made)
        assert e.value.message == (f'certificatesigningrequests.certificates.k8s.io "{made.metadata.name}" is '
                                   f'forbidden: {user} cannot update resource "certificatesigningrequests/status" '
                                   'in API group "certificates.k8s.io" at the cluster scope')


async def test_anonymous_reads_cluster_info_only(api):
    async with _token_client(api) as anon:
        cm = await anon.resource("configmaps", "kube-public").get("cluster-info")
        assert cm.data["kubeconfig"].startswith("apiVersion: v1")
        for call in (anon.pods("default").list(), anon.namespaces().get("default"),
                     anon.resource("configmaps", "kube-system").get("cluster-info")):
            with pytest.raises(Unauthorized) as e:
                await call
            assert e.value.message == "Unauthorized"


async def test_token_authentication(api):
    good = await _token(api)
    async with _token_client(api, good) as c:
        await c.resource("certificatesigningrequests").list()

    tid = good.split(".")[0]
    cases = {
        "abcdef.0123456789abcdef": 'bootstrap token "abcdef" is unknown',           # no such Secret
        f"{tid}.{'0' * 16}": f'bootstrap token "{tid}" is unknown',                 # wrong secret
        "not-a-token": "the token is not a bootstrap token",
    }
    expired = await _token(api, ttl=dt.timedelta(minutes=10), now=meta.now() - dt.timedelta(hours=1))
    cases[expired] = f'bootstrap token "{expired.split(".")[0]}" has expired'
    signing_only = await _token(api, usages=("signing",))
    cases[signing_only] = f'bootstrap token "{signing_only.split(".")[0]}" may not be used for authentication'
    for token, why in cases.items():
        async with _token_client(api, token) as c:
            with pytest.raises(Unauthorized) as e:
                await c.resource("certificatesigningrequests").list()
            assert why in e.value.message, token

    # deleting the Secret revokes the token at once
    await api.client.resource("secrets", "kube-system").delete(f"bootstrap-token-{tid}")
    async with _token_client(api, good) as c:
        with pytest.raises(Unauthorized):
            await c.resource("certificatesigningrequests").list()


async def test_control_plane_components_have_what_they_need(api, tmp_path):
    await api.client.pods("default").create(_pod("p", ""))
    async with _client(api, tmp_path, "system:kube-scheduler") as sched:
        await sched.bind("default", "p", "n1")
        with pytest.raises(Forbidden):
            await sched.resource("secrets", "kube-system").list()
        with pytest.raises(Forbidden):
            await sched.nodes().delete("n1")
    async with _client(api, tmp_path, "system:kube-controller-manager") as cm:
        await cm.resource("secrets", "kube-system").list()
        await cm.pods("default").delete("p", grace_period=0)
        with pytest.raises(Forbidden):
            await cm.pods("default").create(_pod("q", ""))
    with pytest.raises(NotFound):
        await api.client.pods("default").get("p")


async def test_secret_and_configmap_fields(api):
    s = v1.Secret()
    s.metadata.name = "creds"
    s.data["a"] = b"\x00\x01"
    s.stringData["b"] = "text"
    made = await api.client.resource("secrets", "default").create(s)
    assert made.type == "Opaque" and dict(made.data) == {"a": b"\x00\x01", "b": b"text"} and not made.stringData
    bad = v1.Secret(type=tokens.SECRET_TYPE)
    bad.metadata.name = "bootstrap-token-abcdef"
    bad.data["token-id"], bad.data["token-secret"] = b"abcdeg", b"short"
    from kubelab.errors import Invalid
    with pytest.raises(Invalid) as e:
        await api.client.resource("secrets", "kube-system").create(bad)
    assert 'metadata.name: Invalid value: "bootstrap-token-abcdef": must be "bootstrap-token-abcdeg"' in e.value.message
    assert "data[token-secret]: Invalid value: must match [a-z0-9]{16}" in e.value.message
    cm = v1.ConfigMap()
    cm.metadata.name = "cfg"
    cm.data["bad key"] = "v"
    with pytest.raises(Invalid) as e:
        await api.client.resource("configmaps", "default").create(cm)
    assert e.value.message.startswith('configmaps "cfg" is invalid: data[bad key]: Invalid value: "bad key"')


async def test_anonymous_ca_certificates_name_nobody(api):
    """The anonymous CA's key is public: a certificate it signs, whatever its subject, is no
    identity (it only gets through the TLS handshake)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    anon_ca = pki.anonymous_client()[0]
    anon_key = ec.derive_private_key(pki._ANON_SEED, ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    cert, key = pki.issue_cert(anon_ca, anon_key, "kubernetes-admin", organizations=["system:masters"])
    ca = (api.server.opts.pki_dir / "ca.crt").read_bytes()
    async with Client.from_config(ClientConfig(server=api.address, ca_pem=ca, cert_pem=cert, key_pem=key)) as c:
        with pytest.raises(Unauthorized):
            await c.namespaces().list()
        assert (await c.resource("configmaps", "kube-public").get("cluster-info")).metadata.name == "cluster-info"


async def test_csr_validation(api):
    from kubelab.errors import Invalid
    csrs = api.client.resource("certificatesigningrequests")
    bad = _csr()
    bad.metadata.name = "bad"
    bad.spec.request = b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n"
    bad.spec.signerName = ""
    del bad.spec.usages[:]
    with pytest.raises(Invalid) as e:
        await csrs.create(bad)
    msg = e.value.message
    assert msg.startswith('certificatesigningrequests "bad" is invalid: spec.request: Invalid value')
    assert "spec.signerName: Required value" in msg and "spec.usages: Required value" in msg
    good = _csr()
    good.metadata.name = "good"
    made = await csrs.create(good)
    assert made.spec.username == "kubernetes-admin" and not made.status.conditions
    made.spec.signerName = "example.com/other"
    with pytest.raises(Invalid, match="spec: Forbidden: field is immutable"):
        await csrs.update(made)
    made = await csrs.get("good")
    made.status.conditions.add(type="Approved", status="True")
    made.status.conditions.add(type="Denied", status="True")
    with pytest.raises(Invalid, match="Approved and Denied conditions are mutually exclusive"):
        await csrs.update_status(made)
    del made.status.conditions[1]
    made.status.certificate = b"x"
    assert (await csrs.update_status(made)).status.certificate == b"x"
    made = await csrs.get("good")
    made.status.certificate = b"y"
    with pytest.raises(Invalid, match="may not modify existing certificate content"):
        await csrs.update_status(made)


async def test_tls_bootstrap_with_an_expired_token(api):
    """No controller manager here, so the expired Secret stays: the join error must say expired."""
    from kubelab.bootstrap import discovery, tlsbootstrap
    token = await _token(api, ttl=dt.timedelta(minutes=10), now=meta.now() - dt.timedelta(hours=1))
    pin = pki.ca_cert_hash((api.server.opts.pki_dir / "ca.crt").read_bytes())
    with pytest.raises(discovery.ExpiredToken, match=f'bootstrap token "{token[:6]}" has expired.*kubelab token create'):
        await tlsbootstrap.tlsbootstrap(api.address, token, "late", pin, timeout=10)
