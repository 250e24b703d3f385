"""The cluster's certificate authority (kubeadm's `certs` phase): a CA, the API server's
serving certificate, and client certificates whose subject says who the client is
(CN = user, O = groups, as Kubernetes reads them). Later, `init`/`join` reuse it for TLS
bootstrap (CSRs signed by the CA) and discovery (the CA's public key hash).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def generate_key() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str, orgs=()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name(attrs + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def create_ca(common_name: str = "kubelab-ca", *, days: int = 3650) -> tuple[bytes, bytes]:
    key_pem = generate_key()
    key = serialization.load_pem_private_key(key_pem, None)
    name = _name(common_name)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5)).not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def create_csr(key_pem: bytes, common_name: str, organizations=()) -> bytes:
    key = serialization.load_pem_private_key(key_pem, None)
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name(common_name, organizations)).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _sans(sans) -> list:
    out = []
    for s in sans:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(s)))
        except ValueError:
            out.append(x509.DNSName(s))
    return out


def _sign(ca_cert_pem: bytes, ca_key_pem: bytes, subject: x509.Name, public_key, *, days: int, client: bool,
          server: bool, sans=()) -> bytes:
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    usages = ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else []) + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject).public_key(public_key)
         .serial_number(x509.random_serial_number())
         .not_valid_before(_now() - dt.timedelta(minutes=5)).not_valid_after(_now() + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=False,
                                      crl_sign=False, content_commitment=False, data_encipherment=False,
                                      key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(_sans(sans)), critical=False)
    return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def sign_csr(ca_cert_pem: bytes, ca_key_pem: bytes, csr_pem: bytes, *, days: int = 365, client: bool = True,
             server: bool = False, sans=()) -> bytes:
    csr = x509.load_pem_x509_csr(csr_pem)
    if not csr.is_signature_valid:
        raise ValueError("the certificate signing request's signature is not valid")
    return _sign(ca_cert_pem, ca_key_pem, csr.subject, csr.public_key(), days=days, client=client,
                 server=server, sans=sans)


def issue_cert(ca_cert_pem: bytes, ca_key_pem: bytes, common_name: str, *, organizations=(), sans=(),
               client: bool = True, server: bool = False, days: int = 365) -> tuple[bytes, bytes]:
    key_pem = generate_key()
    key = serialization.load_pem_private_key(key_pem, None)
    cert = _sign(ca_cert_pem, ca_key_pem, _name(common_name, organizations), key.public_key(), days=days,
                 client=client, server=server, sans=sans)
    return cert, key_pem


def ca_cert_hash(ca_cert_pem: bytes) -> str:
    """kubeadm's --discovery-token-ca-cert-hash: SHA-256 of the CA's DER SubjectPublicKeyInfo."""
    cert = x509.load_pem_x509_certificate(ca_cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def cert_identity(cert: bytes) -> tuple[str, list[str]]:
    """(user, groups) of a client certificate: CN and the O values."""
    c = x509.load_pem_x509_certificate(cert) if cert.lstrip().startswith(b"-----") else x509.load_der_x509_certificate(cert)
    cn = [a.value for a in c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = [a.value for a in c.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return (cn[0] if cn else ""), orgs


def cert_sans(cert_pem: bytes) -> set[str]:
    c = x509.load_pem_x509_certificate(cert_pem)
    try:
        ext = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in ext.get_values_for_type(x509.IPAddress)} | set(ext.get_values_for_type(x509.DNSName))


@dataclass
class ControlPlanePKI:
    dir: Path
    ca_cert: bytes
    ca_key: bytes
    apiserver_cert: bytes
    apiserver_key: bytes


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def ensure_control_plane_pki(pki_dir: Path, *, sans: list[str] = ()) -> ControlPlanePKI:
    """Create the CA and the API server's certificate once; later calls load them, and reissue
    the serving certificate only when a requested name is missing from it. Idempotent."""
    d = Path(pki_dir)
    d.mkdir(parents=True, exist_ok=True)
    ca_crt, ca_key = d / "ca.crt", d / "ca.key"
    if not (ca_crt.exists() and ca_key.exists()):
        cert, key = create_ca()
        _write(ca_key, key, 0o600)
        _write(ca_crt, cert, 0o644)
    ca_cert_pem, ca_key_pem = ca_crt.read_bytes(), ca_key.read_bytes()
    wanted = {"127.0.0.1", "localhost", socket.gethostname(), "kubernetes", "kubernetes.default", *sans}
    crt, key = d / "apiserver.crt", d / "apiserver.key"
    if not (crt.exists() and key.exists()) or not wanted <= cert_sans(crt.read_bytes()):
        have = cert_sans(crt.read_bytes()) if crt.exists() else set()
        cert, k = issue_cert(ca_cert_pem, ca_key_pem, "kube-apiserver", sans=sorted(wanted | have),
                             client=True, server=True)
        _write(key, k, 0o600)
        _write(crt, cert, 0o644)
    return ControlPlanePKI(d, ca_cert_pem, ca_key_pem, crt.read_bytes(), key.read_bytes())
