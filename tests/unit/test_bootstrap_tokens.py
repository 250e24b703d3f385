"""Pure logic of bootstrap: token format and Secret shape, TTL parsing, the CA pin check,
which CSRs the approver approves, and the authorizer's Forbidden wording."""
from __future__ import annotations

import asyncio
import datetime as dt
import re

import pytest

from kubelab import pki
from kubelab.bootstrap import discovery, tlsbootstrap, tokens
from kubelab.errors import Forbidden, Unauthorized
from master.apiserver.auth import ANONYMOUS, UserInfo
from master.apiserver.authz import Attributes, authorize
from master.controllers.csrsigning import may_auto_approve, node_client_request_problem


def test_generate_and_parse():
    seen = {tokens.generate() for _ in range(50)}
    assert len(seen) == 50 and all(re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", t) for t in seen)
    assert tokens.parse("abcdef.0123456789abcdef") == ("abcdef", "0123456789abcdef")
    for bad in ("abcdef.0123456789abcde", "ABCDEF.0123456789abcdef", "abcdef0123456789abcdef", ""):
        with pytest.raises(tokens.TokenError, match="is not of the form"):
            tokens.parse(bad)


def test_secret_as_kubernetes_stores_it():
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    t = tokens.new_token("abcdef.0123456789abcdef", ttl=dt.timedelta(hours=24), description="d", now=now)
    s = tokens.to_secret(t)
    assert (s.metadata.namespace, s.metadata.name, s.type) == ("kube-system", "bootstrap-token-abcdef",
                                                               "bootstrap.kubernetes.io/token")
    assert {k: v.decode() for k, v in s.data.items()} == {
        "token-id": "abcdef", "token-secret": "0123456789abcdef", "description": "d",
        "expiration": "2026-01-03T03:04:05Z", "usage-bootstrap-authentication": "true",
        "usage-bootstrap-signing": "true", "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token"}
    assert tokens.from_secret(s) == t
    assert not tokens.is_expired(t, now) and tokens.is_expired(t, now + dt.timedelta(days=2))
    assert tokens.new_token(ttl=dt.timedelta(0)).expiration == ""
    with pytest.raises(tokens.TokenError, match='invalid extra group "admins"'):
        tokens.new_token(groups=("admins",))


def test_parse_ttl():
    assert tokens.parse_ttl("24h") == dt.timedelta(hours=24)
    assert tokens.parse_ttl("1h30m") == dt.timedelta(minutes=90)
    assert tokens.parse_ttl("0") == dt.timedelta(0)
    for bad in ("", "1d", "h", "5 m", "1h30x", "2h later"):
        with pytest.raises(tokens.TokenError, match="invalid --ttl"):
            tokens.parse_ttl(bad)


def test_ca_pin():
    ca, _ = pki.create_ca()
    other, _ = pki.create_ca()
    pin = discovery.ca_pin(ca)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", pin)
    discovery.check_pin(ca, pin)
    discovery.check_pin(ca, pin.upper().replace("SHA256", "sha256"))
    with pytest.raises(discovery.CAHashMismatch):
        discovery.check_pin(other, pin)
    with pytest.raises(discovery.BootstrapError, match="expected sha256:<64 hex digits>") as e:
        discovery.check_pin(ca, pin[:-1])
    assert not isinstance(e.value, discovery.CAHashMismatch)


def _csr(cn="system:node:w1", orgs=("system:nodes",), usages=("digital signature", "client auth"),
         user="system:bootstrap:abcdef", groups=("system:bootstrappers",)):
    c = tlsbootstrap.node_csr("x", pki.generate_key())
    c.spec.request = pki.create_csr(pki.generate_key(), cn, list(orgs))
    del c.spec.usages[:]
    c.spec.usages.extend(usages)
    c.spec.username = user
    c.spec.groups.extend(groups)
    return c


def test_auto_approval():
    assert may_auto_approve(_csr())
    assert may_auto_approve(_csr(user="system:node:w1", groups=("system:nodes",)))  # renewal by the node
    assert not may_auto_approve(_csr(user="system:node:w2", groups=("system:nodes",)))  # another node's name
    assert not may_auto_approve(_csr(groups=("system:authenticated",)))
    assert not may_auto_approve(_csr(orgs=("system:masters",)))
    assert not may_auto_approve(_csr(cn="kubernetes-admin"))
    assert not may_auto_approve(_csr(usages=("digital signature", "server auth")))
    wrong_signer = _csr()
    wrong_signer.spec.signerName = "kubernetes.io/kube-apiserver-client"
    assert not may_auto_approve(wrong_signer)
    assert node_client_request_problem(_csr(orgs=("system:nodes", "x"))) == "O ['system:nodes', 'x'] is not [system:nodes]"


def _check(user, verb, resource, namespace="", name="", sub="", stored=None):
    async def fetch():
        return stored
    return asyncio.run(authorize(Attributes(user, verb, resource, namespace, name, sub), fetch))


def test_authorizer_words():
    node = UserInfo("system:node:w1", ("system:nodes",))
    with pytest.raises(Forbidden) as e:
        _check(node, "update", "pods", "default", "x", stored=_pod_on("w2"))
    assert e.value.message == 'pods "x" is forbidden: User "system:node:w1" cannot update resource "pods" in the namespace "default"'
    _check(node, "update", "pods", "default", "x", "status", stored=_pod_on("w1"))
    with pytest.raises(Forbidden) as e:
        _check(node, "list", "secrets")
    assert e.value.message == 'secrets is forbidden: User "system:node:w1" cannot list resource "secrets" at the cluster scope'
    with pytest.raises(Unauthorized):
        _check(ANONYMOUS, "list", "pods", "default")
    _check(ANONYMOUS, "get", "configmaps", "kube-public", "cluster-info")
    _check(UserInfo("jane", ("system:masters",)), "delete", "namespaces", "", "anything")
    boot = UserInfo("system:bootstrap:abcdef", ("system:bootstrappers",))
    _check(boot, "create", "certificatesigningrequests")
    with pytest.raises(Forbidden):
        _check(boot, "delete", "certificatesigningrequests", "", "csr-1")


def _pod_on(node):
    from kubelab.api.v1 import objects_pb2 as v1
    p = v1.Pod()
    p.spec.nodeName = node
    return p
