"""The certificate controllers of kube-controller-manager, for the kubelet's client signer
kubernetes.io/kube-apiserver-client-kubelet:

- csrapproving: approves a request made by a bootstrap token (group system:bootstrappers) or by
  a node renewing its own certificate, when it asks exactly for a node client certificate:
  CN system:node:NAME, O system:nodes, usages (digital signature/key encipherment,) client auth.
  Anything else it leaves alone, for an admin to approve or deny.
- csrsigning: signs every approved, not yet signed request for that signer with the cluster
  CA (--cluster-signing-cert-file/--cluster-signing-key-file, kubeadm's pki/ca.{crt,key})
  and writes the certificate to status.certificate.
"""
from __future__ import annotations

import logging
from pathlib import Path

from kubelab import meta, pki
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from kubelab.client.controller import Controller
from kubelab.client.informer import Informer
from kubelab.errors import Conflict, NotFound

log = logging.getLogger("csr-controllers")
KUBELET_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
ALLOWED_USAGES = ({"digital signature", "client auth"}, {"digital signature", "key encipherment", "client auth"},
                  {"key encipherment", "client auth"})
DEFAULT_DURATION = 365 * 24 * 3600  # --cluster-signing-duration


def condition(csr: v1.CertificateSigningRequest, ctype: str):
    return next((c for c in csr.status.conditions if c.type == ctype), None)


def node_client_request_problem(csr: v1.CertificateSigningRequest) -> str | None:
    """Why this is not a plain node client certificate request, or None if it is."""
    try:
        cn, orgs = pki.csr_subject(csr.spec.request)
    except ValueError as e:
        return f"unreadable request: {e}"
    if not cn.startswith("system:node:") or len(cn) == len("system:node:"):
        return f'CN "{cn}" is not system:node:NAME'
    if orgs != ["system:nodes"]:
        return f"O {orgs} is not [system:nodes]"
    if set(csr.spec.usages) not in ALLOWED_USAGES:
        return f"usages {list(csr.spec.usages)} are not a client certificate's"
    return None


def may_auto_approve(csr: v1.CertificateSigningRequest) -> bool:
    if csr.spec.signerName != KUBELET_SIGNER or node_client_request_problem(csr):
        return False
    groups = set(csr.spec.groups)
    cn, _ = pki.csr_subject(csr.spec.request)
    return "system:bootstrappers" in groups or ("system:nodes" in groups and csr.spec.username == cn)


class _CSRController(Controller):
    workers = 1

    def __init__(self, client: Client):
        super().__init__()
        self.client = client
        self.csrs = self.watch(Informer(client.resource("certificatesigningrequests"),
                                        field_selector=f"spec.signerName={KUBELET_SIGNER}"))

    async def _write_status(self, csr: v1.CertificateSigningRequest) -> None:
        try:
            await self.client.resource("certificatesigningrequests").update_status(csr)
        except NotFound:
            pass  # deleted meanwhile


class CSRApprovingController(_CSRController):
    name = "csrapproving"

    async def reconcile(self, key: str) -> float | None:
        csr = self.csrs.get(key)
        if csr is None or any(condition(csr, t) for t in ("Approved", "Denied", "Failed")):
            return None
        if not may_auto_approve(csr):
            return None
        fresh = v1.CertificateSigningRequest()
        fresh.CopyFrom(csr)
        now = meta.rfc3339()
        fresh.status.conditions.add(type="Approved", status="True", reason="AutoApproved",
                                    message="Auto approving kubelet client certificate after SubjectAccessReview.",
                                    lastUpdateTime=now, lastTransitionTime=now)
        await self._write_status(fresh)  # a Conflict is retried by the controller loop
        log.info("approved %s for %s", key, csr.spec.username)
        return None


class CSRSigningController(_CSRController):
    name = "csrsigning"

    def __init__(self, client: Client, *, cert_file: Path, key_file: Path, duration: int = DEFAULT_DURATION):
        super().__init__(client)
        self.ca_cert, self.ca_key = Path(cert_file).read_bytes(), Path(key_file).read_bytes()
        self.duration = duration

    async def reconcile(self, key: str) -> float | None:
        csr = self.csrs.get(key)
        if csr is None or csr.status.certificate or not condition(csr, "Approved") \
                or condition(csr, "Failed") or condition(csr, "Denied"):
            return None
        fresh = v1.CertificateSigningRequest()
        fresh.CopyFrom(csr)
        problem = node_client_request_problem(csr)
        if problem:
            now = meta.rfc3339()
            fresh.status.conditions.add(type="Failed", status="True", reason="SignerValidationFailure",
                                        message=f"invalid {KUBELET_SIGNER} request: {problem}",
                                        lastUpdateTime=now, lastTransitionTime=now)
        else:
            seconds = csr.spec.expirationSeconds if csr.spec.HasField("expirationSeconds") else self.duration
            seconds = min(seconds, self.duration)
            fresh.status.certificate = pki.sign_csr(self.ca_cert, self.ca_key, csr.spec.request,
                                                    days=seconds / 86400, client=True)
        try:
            await self._write_status(fresh)
        except Conflict:
            return 0.1  # changed meanwhile: the informer's newer copy comes next
        log.info("signed %s", key) if not problem else log.warning("refused to sign %s: %s", key, problem)
        return None
