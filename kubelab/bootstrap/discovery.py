"""Discovery, as kubeadm's token discovery: how a joining node that knows only HOST:PORT, a
bootstrap token and the CA's pin learns to trust the cluster.

The API server publishes kube-public/cluster-info, a kubeconfig holding the cluster CA and
the server's address, readable without credentials. A node cannot verify that read before it
trusts a CA, so it first takes the CA from the TLS handshake (the API server serves its chain
with the CA after its own certificate), checks it against the pin (`sha256:` + hex SHA-256 of
the CA's DER SubjectPublicKeyInfo, kubeadm's --discovery-token-ca-cert-hash), and only then
talks gRPC trusting that CA. Each way this can fail has its own error class.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import socket
import ssl

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kubelab import pki
from kubelab.client.config import ConfigError, grpc_address
from kubelab.api.v1 import objects_pb2 as v1

CLUSTER_INFO = "cluster-info"
NAMESPACE = "kube-public"


class BootstrapError(Exception):
    """A join step failed; the message says which and what to do."""


class MasterUnreachable(BootstrapError):
    pass


class CAHashMismatch(BootstrapError):
    pass


class UnknownToken(BootstrapError):
    pass


class ExpiredToken(BootstrapError):
    pass


def cluster_info_kubeconfig(ca_pem: bytes, server: str, http_server: str = "") -> str:
    """The kubeconfig kubeadm publishes: one cluster (CA + server), no users. With http_server,
    server is the HTTP API (kubectl's) and the gRPC address is the kubelab.dev/grpc extension,
    as in every kubelab config (kubelab/client/config.py)."""
    from kubelab.client.config import ClientConfig, cluster_entry
    cluster = cluster_entry(ClientConfig(server=server, http_server=http_server, ca_pem=ca_pem))
    doc = {"apiVersion": "v1", "kind": "Config", "preferences": {},
           "clusters": [{"name": "", "cluster": cluster}],
           "contexts": None, "current-context": "", "users": None}
    return yaml.safe_dump(doc, sort_keys=False)


def cluster_info_configmap(ca_pem: bytes, server: str, http_server: str = "") -> v1.ConfigMap:
    cm = v1.ConfigMap()
    cm.metadata.name, cm.metadata.namespace = CLUSTER_INFO, NAMESPACE
    cm.data["kubeconfig"] = cluster_info_kubeconfig(ca_pem, server, http_server)
    return cm


def parse_cluster_info(cm: v1.ConfigMap) -> tuple[str, bytes]:
    """(server host:port, CA PEM) from a cluster-info ConfigMap."""
    try:
        doc = yaml.safe_load(cm.data["kubeconfig"])
        cluster = doc["clusters"][0]["cluster"]
        server = grpc_address(cluster) or cluster["server"]
        return server.split("://", 1)[-1], base64.b64decode(cluster["certificate-authority-data"])
    except (KeyError, IndexError, TypeError, ValueError, yaml.YAMLError, ConfigError) as e:
        raise BootstrapError(f"the cluster-info ConfigMap in {NAMESPACE} is malformed ({e!r}); "
                             "restart the API server to publish it again") from None


def ca_pin(ca_pem: bytes) -> str:
    return pki.ca_cert_hash(ca_pem)


def check_pin(ca_pem: bytes, pin: str) -> None:
    """Raise CAHashMismatch unless the CA's public key hashes to `pin` (sha256:<64 hex>)."""
    want = pin.strip().lower()
    if not want.startswith("sha256:") or len(want) != 7 + 64 or any(c not in "0123456789abcdef" for c in want[7:]):
        raise BootstrapError(f'invalid --discovery-token-ca-cert-hash "{pin}": expected sha256:<64 hex digits>')
    got = ca_pin(ca_pem)
    if not hmac.compare_digest(got, want):
        raise CAHashMismatch(f"the cluster CA's public key hash is {got}, not the expected {want}: "
                             "this is not the cluster you meant, or the hash is mistyped "
                             "(`kubelab token create --print-join-command` on the control plane prints it)")


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise BootstrapError(f'invalid API server address "{address}": expected HOST:PORT')
    return host.strip("[]"), int(port)


def _handshake_chain(address: str, timeout: float) -> list[bytes]:
    host, port = _split(address)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # nothing is trusted yet: the pin, not this handshake, decides whether the CA is the right one
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    _, cert, key = pki.anonymous_client()
    import tempfile
    with tempfile.NamedTemporaryFile() as c, tempfile.NamedTemporaryFile() as k:
        c.write(cert), k.write(key)
        c.flush(), k.flush()
        ctx.load_cert_chain(c.name, k.name)
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                chain = tls._sslobj.get_unverified_chain() or []  # public from Python 3.13
                # 3.11/3.12 give _ssl.Certificate objects (public_bytes(ENCODING_DER=2)), 3.13 DER bytes
                return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]
    except (OSError, ssl.SSLError) as e:
        raise MasterUnreachable(f"cannot reach the API server at {address}: {e}; check the address, "
                                "that the control plane runs, and that the port is open") from None


def fetch_ca(address: str, timeout: float = 10.0) -> bytes:
    """The CA certificate (PEM) the API server sends after its own in the TLS handshake."""
    ders = _handshake_chain(address, timeout)
    for der in ders[1:]:
        cert = x509.load_der_x509_certificate(der)
        try:
            if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                return cert.public_bytes(serialization.Encoding.PEM)
        except x509.ExtensionNotFound:
            continue
    raise BootstrapError(f"the server at {address} sent no CA certificate in its TLS handshake; "
                         "is it a kubelab API server?")


async def discover(address: str, pin: str, *, timeout: float = 10.0) -> tuple[str, bytes]:
    """(server, CA PEM) of the cluster at `address`, trusted through `pin`."""
    from kubelab.client.client import Client
    from kubelab.client.config import ClientConfig
    from kubelab.errors import ApiError
    ca = await asyncio.to_thread(fetch_ca, address, timeout)
    check_pin(ca, pin)
    try:
        async with Client.from_config(ClientConfig(server=_host_port(address), ca_pem=ca), timeout=timeout) as c:
            cm = await c.resource("configmaps", NAMESPACE).get(CLUSTER_INFO)
    except ApiError as e:
        raise BootstrapError(f"cannot read {NAMESPACE}/{CLUSTER_INFO} from {address}: {e}") from None
    server, info_ca = parse_cluster_info(cm)
    if ca_pin(info_ca) != ca_pin(ca):
        raise CAHashMismatch(f"the CA in {NAMESPACE}/{CLUSTER_INFO} is not the CA the server at {address} "
                             "presents; refusing to trust either")
    return server, ca


def _host_port(address: str) -> str:
    host, port = _split(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
