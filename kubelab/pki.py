"""The control plane's certificate authority, like kubeadm's `certs` phase.

It makes the cluster CA, the API server's serving certificate, and client certificates
whose subject says who the client is: the API server takes the user from the CN and the
groups from the O values, as Kubernetes does. Later `init`/`join` reuse it for TLS
bootstrap (a node sends a CSR, the control plane signs it with `sign_csr`) and for
discovery (`ca_cert_hash` is kubeadm's --discovery-token-ca-cert-hash).

Keys are ECDSA P-256: small and fast to generate, and every TLS stack gRPC uses accepts them.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import ipaddress
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Backdating tolerates clocks a little behind the control plane's (a joining node's, say).
_BACKDATE = dt.timedelta(minutes=5)


def generate_key() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_key(key_pem: bytes):
    return serialization.load_pem_private_key(key_pem, None)


def _name(cn: str, orgs=()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name(attrs + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key_usage(*, signer: bool, rsa_key: bool) -> x509.KeyUsage:
    # keyEncipherment only means something for RSA key transport; EC keys only sign.
    return x509.KeyUsage(digital_signature=True, key_encipherment=rsa_key and not signer,
                         key_cert_sign=signer, crl_sign=signer, content_commitment=False,
                         data_encipherment=False, key_agreement=False, encipher_only=False,
                         decipher_only=False)


def create_ca(common_name: str = "kubelab-ca", *, days: int = 3650) -> tuple[bytes, bytes]:
    """A self-signed CA: (cert PEM, key PEM)."""
    key_pem = generate_key()
    key = _load_key(key_pem)
    name = _name(common_name)
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(now + dt.timedelta(days=days))
            # path_length=0: this CA signs leaf certificates only, never another CA
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signer=True, rsa_key=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def create_csr(key_pem: bytes, common_name: str, organizations=()) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder().subject_name(_name(common_name, organizations))
           .sign(_load_key(key_pem), hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def _canon_san(s: str) -> str:
    s = s.strip()
    try:
        return str(ipaddress.ip_address(s))
    except ValueError:
        return s.lower()  # DNS names compare case-insensitively


def _san_entries(sans) -> list:
    out = []
    for s in dict.fromkeys(_canon_san(s) for s in sans if s.strip()):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(s)))
        except ValueError:
            out.append(x509.DNSName(s))
    return out


def _sign(ca_cert_pem: bytes, ca_key_pem: bytes, subject: x509.Name, public_key, *, days: int,
          client: bool, server: bool, sans=()) -> bytes:
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = _load_key(ca_key_pem)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
             ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    if not usages:
        raise ValueError("a certificate needs client or server usage (or both)")
    now = _now()
    # a certificate outliving its CA would only fail later, and more confusingly
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject).public_key(public_key)
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - _BACKDATE).not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(_key_usage(signer=False, rsa_key=isinstance(public_key, rsa.RSAPublicKey)), critical=True)
         .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    entries = _san_entries(sans)
    if entries:
        b = b.add_extension(x509.SubjectAlternativeName(entries), critical=False)
    return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def sign_csr(ca_cert_pem: bytes, ca_key_pem: bytes, csr_pem: bytes, *, days: int = 365,
             client: bool = True, server: bool = False, sans=()) -> bytes:
    """Sign a CSR, keeping its subject (so its CN/O become the holder's user/groups)."""
    csr = x509.load_pem_x509_csr(csr_pem)
    if not csr.is_signature_valid:
        raise ValueError("the certificate signing request's signature is not valid")
    return _sign(ca_cert_pem, ca_key_pem, csr.subject, csr.public_key(), days=days, client=client,
                 server=server, sans=sans)


def issue_cert(ca_cert_pem: bytes, ca_key_pem: bytes, common_name: str, *, organizations=(), sans=(),
               client: bool = True, server: bool = False, days: int = 365) -> tuple[bytes, bytes]:
    """A fresh key and a certificate for it: (cert PEM, key PEM)."""
    key_pem = generate_key()
    cert = _sign(ca_cert_pem, ca_key_pem, _name(common_name, organizations), _load_key(key_pem).public_key(),
                 days=days, client=client, server=server, sans=sans)
    return cert, key_pem


def ca_cert_hash(ca_cert_pem: bytes) -> str:
    """kubeadm's --discovery-token-ca-cert-hash: SHA-256 of the CA's DER SubjectPublicKeyInfo."""
    cert = x509.load_pem_x509_certificate(ca_cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _load_cert(cert: bytes | str) -> x509.Certificate:
    if isinstance(cert, str):
        cert = cert.encode()
    if cert.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_certificate(cert)
    return x509.load_der_x509_certificate(cert)


def cert_identity(cert: bytes | str) -> tuple[str, list[str]]:
    """(user, groups) of a client certificate, PEM or DER: its CN and its O values."""
    c = _load_cert(cert)
    cn = [a.value for a in c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = [a.value for a in c.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return (cn[0] if cn else ""), orgs


def cert_sans(cert: bytes | str) -> set[str]:
    """The certificate's SANs as canonical strings (IPs normalised, DNS names lower case)."""
    try:
        ext = _load_cert(cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return ({str(v) for v in ext.get_values_for_type(x509.IPAddress)}
            | {v.lower() for v in ext.get_values_for_type(x509.DNSName)})


# --- the control plane's files -------------------------------------------------------------

# Each component gets its own identity, as in Kubernetes, so authorization and audit can tell
# the scheduler from the controller manager. file stem -> (CN, O)
CLIENTS = {
    # not "admin.*": the data dir's admin config is the one file named admin* (tools look for it)
    "kubernetes-admin": ("kubernetes-admin", ("system:masters",)),
    "scheduler": ("system:kube-scheduler", ()),
    "controller-manager": ("system:kube-controller-manager", ()),
}
# The in-cluster names of the API server, as kubeadm puts them in its serving certificate.
_APISERVER_NAMES = ("kubernetes", "kubernetes.default")


@dataclass(frozen=True)
class CertKey:
    cert_path: Path
    key_path: Path
    cert: bytes
    key: bytes


@dataclass(frozen=True)
class ControlPlanePKI:
    dir: Path
    ca: CertKey
    apiserver: CertKey           # serving cert; client usage too, for calls to kubelets
    admin: CertKey               # kubernetes-admin, group system:masters
    scheduler: CertKey           # system:kube-scheduler
    controller_manager: CertKey  # system:kube-controller-manager


def _write(path: Path, data: bytes, mode: int) -> None:
    # write-then-rename, so a crash never leaves a truncated key or certificate behind
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _usable(cert_path: Path, key_path: Path, ca_cert: x509.Certificate, sans=()) -> bool:
    """Whether an existing pair can be kept: signed by this CA, unexpired, its key matches
    (a crash between writing key and cert leaves them apart), and it covers `sans`."""
    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
        key = _load_key(key_path.read_bytes())
    except (ValueError, TypeError, InvalidSignature):
        return False
    spki = lambda k: k.public_bytes(serialization.Encoding.DER,  # noqa: E731
                                    serialization.PublicFormat.SubjectPublicKeyInfo)
    return (cert.not_valid_after_utc > _now() and spki(cert.public_key()) == spki(key.public_key())
            and {_canon_san(s) for s in sans} <= cert_sans(cert_path.read_bytes()))


def _pair(d: Path, stem: str) -> tuple[Path, Path]:
    return d / f"{stem}.crt", d / f"{stem}.key"


def _loaded(d: Path, stem: str) -> CertKey:
    crt, key = _pair(d, stem)
    return CertKey(crt, key, crt.read_bytes(), key.read_bytes())


def ensure_control_plane_pki(pki_dir: Path, *, sans: list[str] = ()) -> ControlPlanePKI:
    """Create the CA and the control plane's certificates on first call; later calls load
    them. A certificate is issued again only when it is missing, expired, not signed by the
    CA or not matching its key, and the API server's also when a requested SAN is missing
    (it then keeps its old SANs too, so addresses used before still verify).

    Files: ca.{crt,key}, apiserver.{crt,key}, kubernetes-admin.{crt,key}, scheduler.{crt,key},
    controller-manager.{crt,key}; keys mode 0600, certificates 0644.
    """
    d = Path(pki_dir)
    d.mkdir(parents=True, exist_ok=True)
    # two processes starting on one data dir must not each make a CA and mix the halves
    with open(d / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ca_crt, ca_key = _pair(d, "ca")
        if not ca_crt.exists() and not ca_key.exists():
            cert, key = create_ca()
            _write(ca_key, key, 0o600)
            _write(ca_crt, cert, 0o644)
        elif not (ca_crt.exists() and ca_key.exists()):
            # a new CA would silently invalidate every certificate and config handed out
            raise RuntimeError(f"{d}: found only one of ca.crt and ca.key; restore the other "
                               "or remove both to create a new cluster CA")
        ca_pem, ca_key_pem = ca_crt.read_bytes(), ca_key.read_bytes()
        ca_cert = x509.load_pem_x509_certificate(ca_pem)

        wanted = {"127.0.0.1", "localhost", socket.gethostname(), *_APISERVER_NAMES, *sans}
        crt, key = _pair(d, "apiserver")
        if not _usable(crt, key, ca_cert, wanted):
            have = cert_sans(crt.read_bytes()) if crt.exists() else set()
            cert, k = issue_cert(ca_pem, ca_key_pem, "kube-apiserver", sans=sorted(have | wanted),
                                 client=True, server=True)
            _write(key, k, 0o600)
            _write(crt, cert, 0o644)

        for stem, (cn, orgs) in CLIENTS.items():
            crt, key = _pair(d, stem)
            if not _usable(crt, key, ca_cert):
                cert, k = issue_cert(ca_pem, ca_key_pem, cn, organizations=orgs, client=True)
                _write(key, k, 0o600)
                _write(crt, cert, 0o644)

        return ControlPlanePKI(d, _loaded(d, "ca"), _loaded(d, "apiserver"), _loaded(d, "kubernetes-admin"),
                               _loaded(d, "scheduler"), _loaded(d, "controller-manager"))


# --- etcd's own CA, as kubeadm lays it out ------------------------------------------------

@dataclass(frozen=True)
class EtcdPKI:
    dir: Path                  # PKI_DIR/etcd
    ca: CertKey                # etcd-ca: trusted by etcd for clients and peers, never by the API server's clients
    server: CertKey            # etcd's serving certificate (client usage too, as kubeadm issues it)
    peer: CertKey              # member to member
    healthcheck_client: CertKey  # kube-etcd-healthcheck-client: probes and the local runner's readiness check
    apiserver_client: CertKey  # PKI_DIR/apiserver-etcd-client: the API server's identity at etcd


def ensure_etcd_pki(pki_dir: Path, node_name: str, ips: list[str] = ()) -> EtcdPKI:
    """kubeadm's etcd certificates: PKI_DIR/etcd/{ca,server,peer,healthcheck-client}.{crt,key}
    and PKI_DIR/apiserver-etcd-client.{crt,key}, all signed by etcd's own CA (a client of the
    cluster CA, an admin say, is thereby no client of etcd). Server and peer certificates name
    localhost, 127.0.0.1, ::1, the node name and `ips`. Idempotent like ensure_control_plane_pki:
    a pair is issued again only when missing, expired, not this CA's, not matching its key, or
    short of a wanted SAN (then it keeps its old SANs too)."""
    d = Path(pki_dir)
    e = d / "etcd"
    e.mkdir(parents=True, exist_ok=True)
    with open(e / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ca_crt, ca_key = _pair(e, "ca")
        if not ca_crt.exists() and not ca_key.exists():
            cert, key = create_ca("etcd-ca")
            _write(ca_key, key, 0o600)
            _write(ca_crt, cert, 0o644)
        elif not (ca_crt.exists() and ca_key.exists()):
            raise RuntimeError(f"{e}: found only one of ca.crt and ca.key; restore the other "
                               "or remove both to create a new etcd CA")
        ca_pem, ca_key_pem = ca_crt.read_bytes(), ca_key.read_bytes()
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
        sans = {"localhost", "127.0.0.1", "::1", node_name, *ips} - {""}
        wanted = [(e, "server", node_name, (), sans, True),
                  (e, "peer", node_name, (), sans, True),
                  (e, "healthcheck-client", "kube-etcd-healthcheck-client", (), set(), False),
                  (d, "apiserver-etcd-client", "kube-apiserver-etcd-client", (), set(), False)]
        for where, stem, cn, orgs, names, server in wanted:
            crt, key = _pair(where, stem)
            if not _usable(crt, key, ca_cert, names):
                have = cert_sans(crt.read_bytes()) if names and crt.exists() else set()
                cert, k = issue_cert(ca_pem, ca_key_pem, cn, organizations=orgs, sans=sorted(have | names),
                                     client=True, server=server)
                _write(key, k, 0o600)
                _write(crt, cert, 0o644)
        return EtcdPKI(e, _loaded(e, "ca"), _loaded(e, "server"), _loaded(e, "peer"),
                       _loaded(e, "healthcheck-client"), _loaded(d, "apiserver-etcd-client"))


# --- the anonymous client certificate -------------------------------------------------------

# gRPC Python offers a TLS server two modes only: require and verify a client certificate, or
# never ask for one (then no certificate reaches the server). To serve certificate users and
# token/anonymous users on one port, the API server requires a certificate and also trusts
# this well-known CA, whose key is derived from a public constant: anyone can present its
# certificate, so it proves nothing and the API server takes no identity from it (only
# certificates issued by the cluster CA carry a user). A client with a token, or with
# nothing, presents it to get through the handshake.
_ANON_SEED = int.from_bytes(hashlib.sha256(b"kubelab anonymous client, not a secret").digest(), "big")
_ANON_EPOCH = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
ANONYMOUS_CN = "system:anonymous"


def _anon_cert(subject: str, issuer: str, key, signer, *, ca: bool, serial: int) -> bytes:
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(serial)
         .not_valid_before(_ANON_EPOCH).not_valid_after(_ANON_EPOCH + dt.timedelta(days=365 * 80))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
         .add_extension(_key_usage(signer=ca, rsa_key=False), critical=True))
    if not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


_anon: dict[str, bytes] = {}


def anonymous_client() -> tuple[bytes, bytes, bytes]:
    """(ca cert, client cert, client key) of the well-known anonymous client, the same in
    every process (the key is derived, not random; certificates differ only in signature)."""
    if not _anon:
        ca_key = ec.derive_private_key(_ANON_SEED, ec.SECP256R1())
        key = ec.derive_private_key(_ANON_SEED + 1, ec.SECP256R1())
        _anon["ca"] = _anon_cert("kubelab-anonymous-ca", "kubelab-anonymous-ca", ca_key, ca_key, ca=True, serial=1)
        _anon["cert"] = _anon_cert(ANONYMOUS_CN, "kubelab-anonymous-ca", key, ca_key, ca=False, serial=2)
        _anon["key"] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
    return _anon["ca"], _anon["cert"], _anon["key"]


def issued_by(cert: bytes | str, ca_cert_pem: bytes) -> bool:
    """Whether `cert` is signed by this CA (and within its validity)."""
    try:
        c = _load_cert(cert)
        c.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_cert_pem))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return c.not_valid_before_utc <= _now() <= c.not_valid_after_utc


def csr_subject(csr_pem: bytes) -> tuple[str, list[str]]:
    """(CN, O values) a CSR asks for."""
    csr = x509.load_pem_x509_csr(csr_pem)
    cn = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return (cn[0] if cn else ""), orgs
