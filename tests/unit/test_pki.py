"""The certificate authority (kubelab.pki) and the client config (kubelab.client.config),
ending with a real mTLS gRPC round trip on 127.0.0.1."""
import hashlib
import shutil
import socket
import stat
import subprocess

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kubelab import pki
from kubelab.client import config as cc


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _eku(cert: x509.Certificate) -> set:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.fixture(scope="module")
def ca():
    return pki.create_ca("test-ca")


# --- pki -----------------------------------------------------------------------------------

def test_ca_is_a_signing_ca(ca):
    c = _cert(ca[0])
    assert c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert c.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    c.verify_directly_issued_by(c)  # self-signed


def test_issue_cert_chains_to_ca(ca):
    cert_pem, key_pem = pki.issue_cert(*ca, "node-1", organizations=["system:nodes"],
                                       sans=["10.0.0.7", "node-1.example", "::1"], server=True)
    c = _cert(cert_pem)
    c.verify_directly_issued_by(_cert(ca[0]))
    assert not c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _eku(c) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7", "::1"]
    assert san.get_values_for_type(x509.DNSName) == ["node-1.example"]
    key = serialization.load_pem_private_key(key_pem, None)
    assert key.public_key() == c.public_key()

    client_only = _cert(pki.issue_cert(*ca, "someone")[0])
    assert _eku(client_only) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    with pytest.raises(x509.ExtensionNotFound):
        client_only.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_sign_csr_keeps_subject_and_key(ca):
    key_pem = pki.generate_key()
    csr_pem = pki.create_csr(key_pem, "system:node:worker-1", ["system:nodes"])
    cert = _cert(pki.sign_csr(*ca, csr_pem, days=30))
    cert.verify_directly_issued_by(_cert(ca[0]))
    assert pki.cert_identity(cert.public_bytes(serialization.Encoding.PEM)) == \
        ("system:node:worker-1", ["system:nodes"])
    assert cert.public_key() == serialization.load_pem_private_key(key_pem, None).public_key()
    assert _eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    other_ca = pki.create_ca("other")
    with pytest.raises(Exception):
        cert.verify_directly_issued_by(_cert(other_ca[0]))


def test_ca_cert_hash_matches_independent_computation(ca):
    cert_pem, key_pem = ca
    h = pki.ca_cert_hash(cert_pem)
    assert h.startswith("sha256:") and len(h) == len("sha256:") + 64
    # from the CA's private key rather than from the certificate
    spki = serialization.load_pem_private_key(key_pem, None).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert h == "sha256:" + hashlib.sha256(spki).hexdigest()
    # and as kubeadm's documentation computes it, when openssl is at hand
    if shutil.which("openssl"):
        pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout"], input=cert_pem,
                             capture_output=True, check=True).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub,
                             capture_output=True, check=True).stdout
        assert h == "sha256:" + hashlib.sha256(der).hexdigest()
    assert pki.ca_cert_hash(pki.create_ca()[0]) != h


def test_cert_identity_pem_and_der(ca):
    cert_pem, _ = pki.issue_cert(*ca, "jane", organizations=["dev", "ops"])
    der = _cert(cert_pem).public_bytes(serialization.Encoding.DER)
    assert pki.cert_identity(cert_pem) == ("jane", ["dev", "ops"])
    assert pki.cert_identity(der) == ("jane", ["dev", "ops"])
    assert pki.cert_identity(cert_pem.decode()) == ("jane", ["dev", "ops"])
    assert pki.cert_identity(pki.issue_cert(*ca, "solo")[0]) == ("solo", [])


FILES = ["ca", "apiserver", "kubernetes-admin", "scheduler", "controller-manager"]


def test_ensure_control_plane_pki_creates_everything(tmp_path):
    d = tmp_path / "pki"
    p = pki.ensure_control_plane_pki(d, sans=["10.1.2.3", "cp.example"])
    for stem in FILES:
        assert stat.S_IMODE((d / f"{stem}.key").stat().st_mode) == 0o600
        assert (d / f"{stem}.crt").is_file()
    ca = _cert(p.ca.cert)
    assert p.ca.cert == (d / "ca.crt").read_bytes() and p.ca.key_path == d / "ca.key"

    api = _cert(p.apiserver.cert)
    api.verify_directly_issued_by(ca)
    assert _eku(api) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert {"10.1.2.3", "cp.example", "127.0.0.1", "localhost",
            socket.gethostname().lower()} <= pki.cert_sans(p.apiserver.cert)

    identities = {"admin": ("kubernetes-admin", ["system:masters"]),
                  "scheduler": ("system:kube-scheduler", []),
                  "controller_manager": ("system:kube-controller-manager", [])}
    for field, ident in identities.items():
        pair = getattr(p, field)
        _cert(pair.cert).verify_directly_issued_by(ca)
        assert pki.cert_identity(pair.cert) == ident
        assert _eku(_cert(pair.cert)) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_ensure_control_plane_pki_is_idempotent_and_adds_sans(tmp_path):
    d = tmp_path / "pki"
    pki.ensure_control_plane_pki(d, sans=["10.1.2.3"])
    before = {f: (d / f).read_bytes() for f in sorted(p.name for p in d.iterdir() if p.suffix in (".crt", ".key"))}

    pki.ensure_control_plane_pki(d, sans=["10.1.2.3"])
    pki.ensure_control_plane_pki(d, sans=[])  # fewer SANs asked: nothing to do either
    assert {f: (d / f).read_bytes() for f in before} == before

    p = pki.ensure_control_plane_pki(d, sans=["192.168.5.5", "api.example"])
    assert p.ca.cert == before["ca.crt"] and p.ca.key == before["ca.key"]
    assert p.admin.cert == before["kubernetes-admin.crt"]
    assert p.apiserver.cert != before["apiserver.crt"]
    # new names added, the ones asked for before kept
    assert {"192.168.5.5", "api.example", "10.1.2.3"} <= pki.cert_sans(p.apiserver.cert)
    _cert(p.apiserver.cert).verify_directly_issued_by(_cert(p.ca.cert))


def test_ensure_control_plane_pki_repairs_and_protects(tmp_path):
    d = tmp_path / "pki"
    first = pki.ensure_control_plane_pki(d)
    (d / "kubernetes-admin.key").unlink()
    (d / "scheduler.key").write_bytes(pki.generate_key())  # key no longer matches the cert
    p = pki.ensure_control_plane_pki(d)
    assert p.ca.cert == first.ca.cert and p.apiserver.cert == first.apiserver.cert
    assert p.admin.cert != first.admin.cert and p.scheduler.cert != first.scheduler.cert
    assert p.controller_manager.cert == first.controller_manager.cert
    assert _cert(p.scheduler.cert).public_key() == \
        serialization.load_pem_private_key(p.scheduler.key, None).public_key()

    (d / "ca.key").unlink()
    with pytest.raises(RuntimeError, match="only one of ca.crt and ca.key"):
        pki.ensure_control_plane_pki(d)
    assert (d / "ca.crt").read_bytes() == first.ca.cert


# --- client config -------------------------------------------------------------------------

def _admin_cfg(p, server="127.0.0.1:6443") -> cc.ClientConfig:
    return cc.ClientConfig(server=server, ca_pem=p.ca.cert, cert_pem=p.admin.cert, key_pem=p.admin.key)


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    return pki.ensure_control_plane_pki(tmp_path_factory.mktemp("cp") / "pki")


def test_config_round_trip(tmp_path, cp):
    path = tmp_path / "nested" / "admin.conf"
    cc.write_config(path, _admin_cfg(cp))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "v1" and doc["kind"] == "Config"
    assert doc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert doc["current-context"] == "kubernetes-admin@kubelab"
    loaded = cc.load_config(path)
    assert loaded == cc.ClientConfig("127.0.0.1:6443", cp.ca.cert, cp.admin.cert, cp.admin.key, path=path)


def test_config_file_references(tmp_path, cp):
    # kubectl's other spelling: paths (relative to the config file) instead of *-data
    for name, data in (("ca.crt", cp.ca.cert), ("me.crt", cp.admin.cert), ("me.key", cp.admin.key)):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "config").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443/", "certificate-authority": "ca.crt"}}],
        "users": [{"name": "u", "user": {"client-certificate": "me.crt", "client-key": "me.key"}}]}))
    cfg = cc.load_config(tmp_path / "config")
    assert (cfg.server, cfg.ca_pem, cfg.key_pem) == ("10.0.0.1:6443", cp.ca.cert, cp.admin.key)


@pytest.mark.parametrize("content, problem", [
    (None, "file not found"),
    ("clusters: [unclosed", "not valid YAML"),
    ("- just a list", "kubeconfig-style mapping"),
    ("apiVersion: v1\nkind: Config\n", "no clusters entries"),
])
def test_config_errors_name_file_and_problem(tmp_path, content, problem):
    path = tmp_path / "bad.conf"
    if content is not None:
        path.write_text(content)
    with pytest.raises(cc.ConfigError) as e:
        cc.load_config(path)
    assert str(path) in str(e.value) and problem in str(e.value)


def test_config_missing_field(tmp_path, cp):
    path = tmp_path / "admin.conf"
    cc.write_config(path, _admin_cfg(cp))
    for mutate, field in ((lambda d: d["users"][0]["user"].pop("client-key-data"), "user.client-key-data"),
                          (lambda d: d["clusters"][0]["cluster"].pop("server"), "cluster.server"),
                          (lambda d: d.update({"current-context": "nope"}), "no entry named 'nope'")):
        doc = yaml.safe_load(path.read_text())
        mutate(doc)
        (tmp_path / "broken.conf").write_text(yaml.safe_dump(doc))
        with pytest.raises(cc.ConfigError, match="broken.conf") as e:
            cc.load_config(tmp_path / "broken.conf")
        assert field in str(e.value)


def test_resolve_order(tmp_path, monkeypatch, cp):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBELAB_CONFIG", raising=False)
    home_cfg = tmp_path / "home" / ".kubelab" / "config"
    assert cc.resolve_config_path(None) == home_cfg

    with pytest.raises(cc.ConfigError) as e:
        cc.load_default()
    for hint in ("no config found", "--config", "KUBELAB_CONFIG", "kubelab control-plane", "admin.conf"):
        assert hint in str(e.value)

    cc.write_config(home_cfg, _admin_cfg(cp, "home:1"))
    assert cc.load_default().server == "home:1"

    env_cfg = tmp_path / "env.conf"
    cc.write_config(env_cfg, _admin_cfg(cp, "env:2"))
    monkeypatch.setenv("KUBELAB_CONFIG", str(env_cfg))
    assert cc.resolve_config_path(None) == env_cfg
    assert cc.load_default().server == "env:2"

    flag_cfg = tmp_path / "flag.conf"
    cc.write_config(flag_cfg, _admin_cfg(cp, "flag:3"))
    assert cc.resolve_config_path(str(flag_cfg)) == flag_cfg
    assert cc.load_default(str(flag_cfg)).server == "flag:3"

    # a path named explicitly that does not exist is an error, not a fallback
    with pytest.raises(cc.ConfigError, match="file not found"):
        cc.load_default(str(tmp_path / "missing.conf"))


# --- mTLS round trip -----------------------------------------------------------------------

WHOAMI = "/test.Identity/WhoAmI"


async def _whoami(request: bytes, context) -> bytes:
    # what the API server will do: the verified client certificate names the caller
    pem = context.auth_context()["x509_pem_cert"][0]
    user, groups = pki.cert_identity(pem)
    return ",".join([user, *groups]).encode()


async def _check(target: str, creds, options) -> health_pb2.HealthCheckResponse:
    async with grpc.aio.secure_channel(target, creds, options=options) as ch:
        return await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)


async def test_mtls_round_trip(cp, tmp_path):
    server = grpc.aio.server(options=cc.server_options())
    hs = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Identity", {
        "WhoAmI": grpc.unary_unary_rpc_method_handler(_whoami)}),))
    port = server.add_secure_port("127.0.0.1:0", cc.server_credentials(
        cp.ca.cert, cp.apiserver.cert, cp.apiserver.key))
    await server.start()
    try:
        await hs.set("", health_pb2.HealthCheckResponse.SERVING)
        cfg = cc.ClientConfig(f"127.0.0.1:{port}", cp.ca.cert, cp.admin.cert, cp.admin.key)
        opts = cc.channel_options(cfg.server)

        # the admin, through a config file as the CLI would
        cc.write_config(tmp_path / "admin.conf", cfg)
        loaded = cc.load_config(tmp_path / "admin.conf")
        resp = await _check(loaded.server, cc.channel_credentials(loaded), opts)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.secure_channel(cfg.server, cc.channel_credentials(cfg), options=opts) as ch:
            assert await ch.unary_unary(WHOAMI)(b"", timeout=5) == b"kubernetes-admin,system:masters"

        # the scheduler's identity comes through as its own
        sched = cc.ClientConfig(cfg.server, cp.ca.cert, cp.scheduler.cert, cp.scheduler.key)
        async with grpc.aio.secure_channel(cfg.server, cc.channel_credentials(sched), options=opts) as ch:
            assert await ch.unary_unary(WHOAMI)(b"", timeout=5) == b"system:kube-scheduler"

        # TLS that trusts the server but presents no client certificate is refused
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await _check(cfg.server, grpc.ssl_channel_credentials(root_certificates=cp.ca.cert), opts)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE

        # so is a client certificate from another CA
        other_ca = pki.create_ca("intruder-ca")
        cert, key = pki.issue_cert(*other_ca, "kubernetes-admin", organizations=["system:masters"])
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await _check(cfg.server, grpc.ssl_channel_credentials(cp.ca.cert, key, cert), opts)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE

        # and a client that does not trust the server's CA gives up too
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await _check(cfg.server, grpc.ssl_channel_credentials(other_ca[0], cp.admin.key, cp.admin.cert), opts)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)
