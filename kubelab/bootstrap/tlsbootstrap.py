"""TLS bootstrap, the kubelet's first start on a joining node: with only a bootstrap token,
get the node its own client certificate.

discover the cluster (discovery.py) -> make a key and a CSR for CN system:node:NAME, O
system:nodes, signer kubernetes.io/kube-apiserver-client-kubelet -> create the
CertificateSigningRequest as the token's user -> wait until the control plane approves it
(csrapproving) and signs it (csrsigning) -> write kubelet.conf with the node's key and
certificate. The token is used for nothing else and is not written anywhere.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from kubelab import pki
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from kubelab.client.config import ClientConfig, http_address, write_config
from kubelab.errors import ApiError, Unauthorized

from . import discovery
from .discovery import BootstrapError, ExpiredToken, UnknownToken
from .tokens import TokenError, parse

KUBELET_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
KUBELET_USAGES = ("digital signature", "client auth")


@dataclass
class BootstrapResult:
    server: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    csr_name: str
    config_path: Path | None


def node_csr(node_name: str, key_pem: bytes, *, expiration_seconds: int | None = None) -> v1.CertificateSigningRequest:
    csr = v1.CertificateSigningRequest()
    csr.metadata.generateName = "csr-"
    csr.spec.request = pki.create_csr(key_pem, f"system:node:{node_name}", ["system:nodes"])
    csr.spec.signerName = KUBELET_SIGNER
    csr.spec.usages.extend(KUBELET_USAGES)
    if expiration_seconds is not None:
        csr.spec.expirationSeconds = expiration_seconds
    return csr


def token_error(e: Unauthorized) -> BootstrapError:
    """The API server's refusal of a bootstrap token, as UnknownToken or ExpiredToken."""
    msg = str(e)
    if "expired" in msg:
        return ExpiredToken(f"{msg}: create a new one on the control plane with `kubelab token create`")
    return UnknownToken(f"{msg}: check the --token value (`kubelab token list` on the control plane)")


async def tlsbootstrap(address: str, token: str, node_name: str, ca_pin: str, *,
                       config_path: Path | None = None, timeout: float = 60.0,
                       discovered: tuple[str, bytes] | None = None) -> BootstrapResult:
    """`discovered`: (server, CA) from an earlier discovery.discover with this pin (join shows
    discovery as a phase of its own), so the CA is not fetched twice."""
    try:
        parse(token)
    except TokenError as e:
        raise BootstrapError(str(e)) from None
    server, ca = discovered or await discovery.discover(address, ca_pin, timeout=min(timeout, 10.0))
    key = pki.generate_key()
    end = time.monotonic() + timeout
    # the CSR goes to the address the node was given (it answered the pinned handshake)
    async with Client.from_config(ClientConfig(server=discovery._host_port(address), ca_pem=ca, token=token),
                                  timeout=10.0) as c:
        csrs = c.resource("certificatesigningrequests")
        try:
            created = await csrs.create(node_csr(node_name, key))
        except Unauthorized as e:
            raise token_error(e) from None
        name = created.metadata.name
        while True:
            try:
                cur = await csrs.get(name)
            except Unauthorized as e:
                raise token_error(e) from None
            except ApiError:
                cur = None  # a restarting API server: try again until the deadline
            if cur is not None:
                conds = {x.type: x for x in cur.status.conditions}
                for bad in ("Denied", "Failed"):
                    if bad in conds:
                        raise BootstrapError(f"certificate signing request {name} was {bad.lower()}: "
                                             f"{conds[bad].reason} {conds[bad].message}".strip())
                if cur.status.certificate:
                    break
            if time.monotonic() > end:
                state = "approved, not signed" if cur is not None and any(
                    x.type == "Approved" for x in cur.status.conditions) else "not approved"
                raise BootstrapError(f"certificate signing request {name} still {state} after {timeout:.0f}s: "
                                     "is the controller manager running (csrapproving, csrsigning)?")
            await asyncio.sleep(0.2)
    cert = bytes(cur.status.certificate)
    if pki.cert_identity(cert)[0] != f"system:node:{node_name}" or not pki.issued_by(cert, ca):
        raise BootstrapError(f"the certificate issued for {name} is not a cluster CA certificate for "
                             f"system:node:{node_name}")
    if config_path is not None:
        # the HTTP API at the API server's default, the next port (a kubeconfig kubectl reads too)
        write_config(config_path, ClientConfig(server=server, http_server=http_address(server), ca_pem=ca,
                                               cert_pem=cert, key_pem=key), user=f"system:node:{node_name}")
    return BootstrapResult(server, ca, cert, key, name, config_path)
