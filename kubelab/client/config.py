"""The client config file and the mTLS credentials built from it.

The file is a kubeconfig (clusters, users, contexts, current-context) that the real kubectl
reads as it is: `clusters[].cluster.server` is the API server's HTTP face (https://host:port),
and the cluster extension named `kubelab.dev/grpc` (`{server: host:port, http-server:
host:port}`) is its gRPC address, which kubelab's own clients use (`ClientConfig.server`). The
extension holds only while `server` is still the HTTP address it was written beside: a config
whose `server` was edited by hand, or one without the extension (an older kubelab's), is read
with `server` as the gRPC address, so an edit is never silently overridden. The CLI finds the file
through --config, then $KUBELAB_CONFIG, then ~/.kubelab/config; `kubelab control-plane` writes
DATA_DIR/admin.conf.
"""
from __future__ import annotations

import base64
import binascii
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml

DEFAULT_PATH = "~/.kubelab/config"
ENV_VAR = "KUBELAB_CONFIG"
MAX_MESSAGE = 64 << 20
GRPC_EXTENSION = "kubelab.dev/grpc"


class ConfigError(Exception):
    pass


@dataclass
class ClientConfig:
    server: str  # host:port of the API server
    ca_pem: bytes
    cert_pem: bytes = b""  # empty with a token: the API server then takes the user from the token
    key_pem: bytes = b""
    path: Path | None = None
    token: str = ""  # a bearer token (a bootstrap token "<id>.<secret>"), sent with every call
    http_server: str = ""  # host:port of the HTTP API (kubectl's server); "": unknown (an older config)


def _strip_scheme(server: str) -> str:
    return server.split("://", 1)[-1].rstrip("/")


def write_config(path, cfg: ClientConfig, *, cluster_name: str = "kubelab", user: str = "kubernetes-admin") -> None:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    ctx = f"{user}@{cluster_name}"
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": ctx,
        "clusters": [{"name": cluster_name, "cluster": cluster_entry(cfg)}],
        "users": [{"name": user, "user": ({"client-certificate-data": b64(cfg.cert_pem),
                                           "client-key-data": b64(cfg.key_pem)} if cfg.cert_pem else {})
                   | ({"token": cfg.token} if cfg.token else {})}],
        "contexts": [{"name": ctx, "context": {"cluster": cluster_name, "user": user}}],
    }
    # it holds a private key: 0600 from the first byte, and replaced whole, never half-written
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cluster_entry(cfg: ClientConfig) -> dict:
    """A kubeconfig cluster: server is the HTTP face when known (what kubectl dials), and the
    gRPC address travels in the kubelab.dev/grpc extension (kubectl keeps extensions as data)."""
    b64 = base64.b64encode(cfg.ca_pem).decode()
    if not cfg.http_server:
        return {"server": f"https://{_strip_scheme(cfg.server)}", "certificate-authority-data": b64}
    return {"server": f"https://{_strip_scheme(cfg.http_server)}", "certificate-authority-data": b64,
            "extensions": [{"name": GRPC_EXTENSION, "extension": {"server": _strip_scheme(cfg.server),
                                                                  "http-server": _strip_scheme(cfg.http_server)}}]}


def http_address(grpc_server: str) -> str:
    """The HTTP face's host:port when only the gRPC one is known: the API server's default
    (--http-listen unset) is the next port."""
    host, _, port = _strip_scheme(grpc_server).rpartition(":")
    return f"{host}:{int(port) + 1}" if port.isdigit() else ""


def grpc_address(cluster: dict, where: str = "cluster", path: Path | str = "") -> str | None:
    """The gRPC host:port of a kubeconfig cluster entry from its kubelab.dev/grpc extension, or
    None (no extension, or `server` no longer the HTTP address the extension was written for)."""
    exts = cluster.get("extensions") or []
    if not isinstance(exts, list):
        raise ConfigError(f"config {path}: {where}.extensions must be a list")
    for i, e in enumerate(exts):
        if isinstance(e, dict) and e.get("name") == GRPC_EXTENSION:
            ext = e.get("extension")
            if not isinstance(ext, dict) or not isinstance(ext.get("server"), str) or not ext["server"]:
                raise ConfigError(f"config {path}: missing field {where}.extensions[{i}].extension.server "
                                  f"({GRPC_EXTENSION}: the API server's gRPC host:port)")
            paired = ext.get("http-server")
            if paired and _strip_scheme(str(paired)) != _strip_scheme(str(cluster.get("server", ""))):
                return None  # server was changed by hand: it is what the user means to reach
            return _strip_scheme(ext["server"])
    return None


def _pick(doc: dict, section: str, name, path: Path) -> dict:
    items = doc.get(section) or []
    if not isinstance(items, list):
        raise ConfigError(f"config {path}: {section} must be a list")
    for it in items:
        if isinstance(it, dict) and (name is None or it.get("name") == name):
            return it
    if name is None:
        raise ConfigError(f"config {path}: no {section} entries")
    raise ConfigError(f"config {path}: {section} has no entry named {name!r}")


def _pem(section: dict, key: str, where: str, path: Path) -> bytes:
    """The *-data field (base64 PEM) or, as kubectl also allows, the file it names."""
    if section.get(f"{key}-data"):
        try:
            data = base64.b64decode(section[f"{key}-data"], validate=False)
        except (binascii.Error, TypeError, ValueError):
            raise ConfigError(f"config {path}: {where}.{key}-data is not valid base64") from None
    elif section.get(key):
        # relative to the config file, as kubectl resolves them
        file = (path.parent / Path(section[key]).expanduser())
        try:
            data = file.read_bytes()
        except OSError as e:
            raise ConfigError(f"config {path}: {where}.{key}: cannot read {file}: {e.strerror}") from None
    else:
        raise ConfigError(f"config {path}: missing field {where}.{key}-data")
    if b"-----BEGIN " not in data:
        raise ConfigError(f"config {path}: {where}.{key} is not PEM data")
    return data


def load_config(path) -> ClientConfig:
    path = Path(path).expanduser()
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config {path}: file not found") from None
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read it: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config {path}: expected a kubeconfig-style mapping (apiVersion, kind: Config, ...)")

    # like kubectl: current-context picks cluster and user; without contexts, the first of each
    ctx_name = doc.get("current-context") or None
    ctx = {}
    if doc.get("contexts") or ctx_name:
        ctx = _pick(doc, "contexts", ctx_name, path).get("context")
        if not isinstance(ctx, dict):
            raise ConfigError(f"config {path}: missing field contexts[{ctx_name or 0}].context")
    cl_name, user_name = ctx.get("cluster"), ctx.get("user")
    cluster = _pick(doc, "clusters", cl_name, path).get("cluster")
    user = _pick(doc, "users", user_name, path).get("user")
    if not isinstance(cluster, dict):
        raise ConfigError(f"config {path}: missing field clusters[{cl_name or 0}].cluster")
    if not isinstance(user, dict):
        raise ConfigError(f"config {path}: missing field users[{user_name or 0}].user")
    if not cluster.get("server"):
        raise ConfigError(f"config {path}: missing field clusters[{cl_name or 0}].cluster.server")
    token = user.get("token") or ""
    if not isinstance(token, str):
        raise ConfigError(f"config {path}: users[{user_name or 0}].user.token must be a string")
    has_cert = any(user.get(k) for k in ("client-certificate", "client-certificate-data"))
    if token and not has_cert:
        cert = key = b""
    else:
        cert = _pem(user, "client-certificate", "user", path)
        key = _pem(user, "client-key", "user", path)
    server = _strip_scheme(str(cluster["server"]))
    grpc_server = grpc_address(cluster, f"clusters[{cl_name or 0}].cluster", path)
    return ClientConfig(
        server=grpc_server or server, http_server=server if grpc_server else "",
        ca_pem=_pem(cluster, "certificate-authority", "cluster", path),
        cert_pem=cert, key_pem=key, path=path, token=token)


def resolve_config_path(explicit: str | None = None) -> Path:
    """--config, then $KUBELAB_CONFIG, then ~/.kubelab/config."""
    return Path(explicit or os.environ.get(ENV_VAR) or DEFAULT_PATH).expanduser()


def load_default(explicit: str | None = None) -> ClientConfig:
    path = resolve_config_path(explicit)
    if explicit or os.environ.get(ENV_VAR):
        return load_config(path)  # named on purpose: "file not found" says enough
    if not path.exists():
        raise ConfigError(f'no config found ({path} does not exist): pass --config, set {ENV_VAR}, or run '
                          '"kubelab control-plane --data-dir DATA_DIR", which writes DATA_DIR/admin.conf')
    return load_config(path)


def channel_credentials(cfg: ClientConfig) -> grpc.ChannelCredentials:
    """mTLS with the config's certificate; without one, the well-known anonymous certificate
    (see kubelab.pki.anonymous_client) gets the handshake through and the token, if any,
    travels as `authorization: Bearer <token>` on every call."""
    cert, key = cfg.cert_pem, cfg.key_pem
    if not cert:
        from kubelab.pki import anonymous_client
        _, cert, key = anonymous_client()
    creds = grpc.ssl_channel_credentials(root_certificates=cfg.ca_pem, private_key=key, certificate_chain=cert)
    if cfg.token:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(cfg.token))
    return creds


def server_credentials(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> grpc.ServerCredentials:
    """TLS that requires a client certificate of the cluster CA or the anonymous one (mTLS).
    A cluster CA certificate says who the caller is; the anonymous one says nothing, and the
    API server's authenticator then looks for a bearer token. `cert_pem` may carry the CA
    after the serving certificate, so a joining node can read the CA from the handshake."""
    from kubelab.pki import anonymous_client
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem.rstrip() + b"\n" + anonymous_client()[0],
                                       require_client_auth=True)


def channel_options(server: str) -> list:
    """Client channel options. The API server's certificate carries 127.0.0.1, localhost and
    the host name as SANs, so `server` needs no target-name override."""
    return [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE),
            # pings keep an idle watch's connection alive through NATs and notice dead peers
            ("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # 0 = no cap on pings while no data flows; a quiet watch can last hours
            ("grpc.http2.max_pings_without_data", 0)]


def server_options() -> list:
    """Server options matching `channel_options`: gRPC servers by default answer a client
    pinging more often than every 5 minutes with GOAWAY (too_many_pings)."""
    return [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000)]
