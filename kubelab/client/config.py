"""The client config file (kubeconfig's shape: clusters, users, contexts) and the mTLS
credentials built from it. The CLI finds it through --config, then $KUBELAB_CONFIG, then
~/.kubelab/config; `kubelab control-plane` writes DATA_DIR/admin.conf.
"""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml


class ConfigError(Exception):
    pass


@dataclass
class ClientConfig:
    server: str  # host:port of the API server
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    path: Path | None = None


def write_config(path, cfg: ClientConfig, *, cluster_name: str = "kubelab", user: str = "kubernetes-admin") -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    ctx = f"{user}@{cluster_name}"
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": ctx,
        "clusters": [{"name": cluster_name, "cluster": {"server": f"https://{cfg.server}",
                                                        "certificate-authority-data": b64(cfg.ca_pem)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cfg.cert_pem),
                                          "client-key-data": b64(cfg.key_pem)}}],
        "contexts": [{"name": ctx, "context": {"cluster": cluster_name, "user": user}}],
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    os.replace(tmp, path)


def _pick(items, name, what, path):
    for it in items or ():
        if it.get("name") == name:
            return it
    if items and name is None:
        return items[0]
    raise ConfigError(f"config {path}: no {what} named {name!r}")


def load_config(path) -> ClientConfig:
    path = Path(path).expanduser()
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config {path}: file not found") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"config {path}: cannot read it: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config {path}: not a kubeconfig-style YAML mapping")
    try:
        ctx_name = doc.get("current-context")
        ctx = _pick(doc.get("contexts"), ctx_name, "context", path)["context"] if doc.get("contexts") else {}
        cluster = _pick(doc.get("clusters"), ctx.get("cluster"), "cluster", path)["cluster"]
        user = _pick(doc.get("users"), ctx.get("user"), "user", path)["user"]
        server = cluster["server"].split("://", 1)[-1].rstrip("/")
        return ClientConfig(server=server, ca_pem=base64.b64decode(cluster["certificate-authority-data"]),
                            cert_pem=base64.b64decode(user["client-certificate-data"]),
                            key_pem=base64.b64decode(user["client-key-data"]), path=path)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"config {path}: missing or bad field {e}") from None


def resolve_config_path(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("KUBELAB_CONFIG")
    if env:
        return Path(env).expanduser()
    return Path("~/.kubelab/config").expanduser()


def load_default(explicit: str | None = None) -> ClientConfig:
    path = resolve_config_path(explicit)
    if not explicit and not os.environ.get("KUBELAB_CONFIG") and not path.exists():
        raise ConfigError('no config found: pass --config, set KUBELAB_CONFIG, or run '
                          '"kubelab control-plane --data-dir DIR", which writes DIR/admin.conf')
    return load_config(path)


def channel_credentials(cfg: ClientConfig) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=cfg.ca_pem, private_key=cfg.key_pem,
                                        certificate_chain=cfg.cert_pem)


def server_credentials(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem,
                                       require_client_auth=True)


def channel_options(server: str) -> list:
    return [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
            ("grpc.keepalive_time_ms", 30000), ("grpc.keepalive_timeout_ms", 10000),
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
