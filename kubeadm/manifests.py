"""The static Pod manifests init and join write into ETC/manifests (kubeadm's
/etc/kubernetes/manifests): etcd, kube-apiserver, kube-scheduler and kube-controller-manager on
the master, and the overlay agent kube-overlay on every node. The kubelet runs them before any
API server exists and mirrors them into kube-system as `<name>-<node>`.

The image (docs/bootstrap.md says why): the node's local `busybox` image, imagePullPolicy
Never, with this Python environment mounted read-only from the host, as kubeadm's pods mount
host paths: sys.base_prefix (the interpreter), sys.prefix (the venv with kubelab's packages and
etcd), the project's source dir, /usr and the dynamic loader's dirs. Every manifest is plain
data built here, so the unit tests read exactly what the kubelet reads.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

IMAGE = "busybox"
SOURCE_DIR = Path(__file__).resolve().parents[1]
LOADER_DIRS = ("/lib", "/lib64", "/lib32", "/libx32")
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Mount:
    name: str
    path: str                # host path, mounted at the same path in the container
    read_only: bool = True
    type: str = ""           # hostPath type: "", Directory, DirectoryOrCreate, File


def environment_paths() -> list[str]:
    """The host paths that make `python -m kubelab.cli.main` run inside a busybox container."""
    paths = [sys.base_prefix, sys.prefix, str(SOURCE_DIR), "/usr"]
    paths += [d for d in LOADER_DIRS if os.path.exists(d)]
    out: list[str] = []
    for p in sorted({os.path.normpath(p) for p in paths}, key=len):
        # a path under one already mounted comes with it (a venv inside the source dir)
        if not any(p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return out


def environment_mounts() -> list[Mount]:
    return [Mount(f"env-{i}", p) for i, p in enumerate(environment_paths())]


def python_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "kubelab.cli.main", *args]


def static_pod(name: str, command: list[str], mounts: list[Mount], *, component: str | None = None,
               privileged: bool = False, priority_class: str = "system-node-critical") -> dict:
    """A kube-system static Pod on the host network, kubeadm's shape (labels component and tier)."""
    mounts = environment_mounts() + list(mounts)
    container = {
        "name": name,
        "image": IMAGE,
        "imagePullPolicy": "Never",
        "command": command,
        "env": [{"name": "PATH", "value": f"{Path(sys.executable).parent}:{CONTAINER_PATH}"},
                {"name": "PYTHONPATH", "value": str(SOURCE_DIR)},
                {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "volumeMounts": [{"name": m.name, "mountPath": m.path, "readOnly": m.read_only} for m in mounts],
    }
    if privileged:
        container["securityContext"] = {"privileged": True}
    labels = {"component": component, "tier": "control-plane"} if component else {"app": name}
    del priority_class  # kubelab has no PriorityClass yet; kept in the signature as kubeadm's intent
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "kube-system", "labels": labels},
        "spec": {
            "hostNetwork": True,
            "containers": [container],
            "volumes": [{"name": m.name, "hostPath": {"path": m.path, **({"type": m.type} if m.type else {})}}
                        for m in mounts],
        },
    }


def to_yaml(pod: dict) -> str:
    return yaml.safe_dump(pod, sort_keys=False)


def write(manifest_dir: Path, name: str, pod: dict) -> Path:
    """Write ETC/manifests/NAME.yaml whole (the kubelet scans the dir and must never read half)."""
    manifest_dir.mkdir(parents=True, exist_ok=True)
    path = manifest_dir / f"{name}.yaml"
    tmp = manifest_dir / f".{name}.yaml.tmp"  # dot files are skipped by the kubelet's scan
    tmp.write_text(to_yaml(pod))
    os.replace(tmp, path)
    return path


# ---- the control plane

@dataclass(frozen=True)
class ControlPlane:
    etc_dir: Path
    var_dir: Path
    advertise_address: str
    pod_network_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/12"
    etcd_client_port: int = 2379
    etcd_peer_port: int = 2380
    apiserver_port: int = 6443
    node_cidr_mask_size: int = 24
    node_name: str = ""

    @property
    def pki(self) -> Path:
        return self.etc_dir / "pki"

    @property
    def etcd_endpoint(self) -> str:
        return f"https://127.0.0.1:{self.etcd_client_port}"


def etcd_pod(cp: ControlPlane) -> dict:
    """kubeadm's etcd: TLS for clients and peers, each asked for a certificate of etcd's own CA
    (pki/etcd, pki.ensure_etcd_pki), on the master's loopback (the API server is its only client)."""
    from kubelab.etcd.server import etcd_argv
    data = cp.var_dir / "etcd"
    argv = etcd_argv(name=cp.node_name or "default", data_dir=data,
                     listen_client_urls=[f"https://127.0.0.1:{cp.etcd_client_port}"],
                     listen_peer_urls=[f"https://127.0.0.1:{cp.etcd_peer_port}"], tls_dir=cp.pki / "etcd")
    return static_pod("etcd", argv, [Mount("etcd-data", str(data), read_only=False, type="DirectoryOrCreate"),
                                     Mount("etcd-certs", str(cp.pki / "etcd"), type="Directory")], component="etcd")


def apiserver_pod(cp: ControlPlane) -> dict:
    # on the advertise address, which every config names: the API server publishes its listen
    # address in kube-public/cluster-info, and a wildcard there is no address a node can dial
    argv = python_argv("apiserver", "--etcd-servers", cp.etcd_endpoint,
                       "--etcd-cafile", str(cp.pki / "etcd" / "ca.crt"),
                       "--etcd-certfile", str(cp.pki / "apiserver-etcd-client.crt"),
                       "--etcd-keyfile", str(cp.pki / "apiserver-etcd-client.key"),
                       "--listen", f"{cp.advertise_address}:{cp.apiserver_port}", "--pki-dir", str(cp.pki),
                       "--http-listen", f"{cp.advertise_address}:{cp.apiserver_port + 1}",
                       "--advertise-address", cp.advertise_address,
                       "--service-cluster-ip-range", cp.service_cidr)
    return static_pod("kube-apiserver", argv, [Mount("k8s-certs", str(cp.pki), type="Directory")],
                      component="kube-apiserver")


def scheduler_pod(cp: ControlPlane) -> dict:
    conf = cp.etc_dir / "scheduler.conf"
    return static_pod("kube-scheduler", python_argv("scheduler", "--config", str(conf)),
                      [Mount("kubeconfig", str(conf), type="File")], component="kube-scheduler")


def controller_manager_pod(cp: ControlPlane) -> dict:
    conf = cp.etc_dir / "controller-manager.conf"
    argv = python_argv("controller-manager", "--config", str(conf), "--cluster-cidr", cp.pod_network_cidr,
                       "--node-cidr-mask-size", str(cp.node_cidr_mask_size),
                       "--cluster-signing-cert-file", str(cp.pki / "ca.crt"),
                       "--cluster-signing-key-file", str(cp.pki / "ca.key"))
    return static_pod("kube-controller-manager", argv,
                      [Mount("k8s-certs", str(cp.pki), type="Directory"), Mount("kubeconfig", str(conf), type="File")],
                      component="kube-controller-manager")


CONTROL_PLANE = {"etcd": etcd_pod, "kube-apiserver": apiserver_pod, "kube-scheduler": scheduler_pod,
                 "kube-controller-manager": controller_manager_pod}


# ---- every node

def overlay_pod(*, kubelet_conf: Path, node_name: str, iface: str, node_ip: str,
                cluster_cidr: str = "10.244.0.0/16") -> dict:
    """flannel's DaemonSet pod, as a static pod: hostNetwork, privileged (it makes flannel.1 and
    programs routes, neighbours and FDB entries), /run/flannel for its subnet file."""
    argv = python_argv("overlay", "--config", str(kubelet_conf), "--node-name", node_name, "--iface", iface,
                       "--node-ip", node_ip, "--cluster-cidr", cluster_cidr)
    return static_pod("kube-overlay", argv,
                      [Mount("run-flannel", "/run/flannel", read_only=False, type="DirectoryOrCreate"),
                       Mount("kubeconfig", str(kubelet_conf), type="File")], privileged=True)


def proxy_pod(*, kubelet_conf: Path, node_name: str, cluster_cidr: str = "10.244.0.0/16") -> dict:
    """kube-proxy's DaemonSet pod, as a static pod kube-proxy-<node>: hostNetwork, privileged (it
    writes the node's iptables and sysctls), with the node's credentials. /etc/alternatives comes
    along because Debian's iptables commands are links through it."""
    argv = python_argv("proxy", "--config", str(kubelet_conf), "--node-name", node_name,
                       "--cluster-cidr", cluster_cidr)
    mounts = [Mount("kubeconfig", str(kubelet_conf), type="File")]
    if os.path.isdir("/etc/alternatives"):
        mounts.append(Mount("alternatives", "/etc/alternatives", type="Directory"))
    return static_pod("kube-proxy", argv, mounts, privileged=True)


# ---- addons (on the master)

def dns_pod(*, kubelet_conf: Path, cluster_domain: str = "cluster.local") -> dict:
    """The cluster DNS (kubeadm's CoreDNS Deployment, as a static pod): on the pod network, so
    it has a pod IP behind the Service kube-system/kube-dns (selector k8s-app=kube-dns);
    dnsPolicy Default, as CoreDNS's pods have, so it never asks itself. It reads Services and
    EndpointSlices with the node's credentials."""
    argv = python_argv("dns", "--config", str(kubelet_conf), "--listen", "0.0.0.0:53",
                       "--cluster-domain", cluster_domain)
    pod = static_pod("kube-dns", argv, [Mount("kubeconfig", str(kubelet_conf), type="File")])
    pod["metadata"]["labels"] = {"k8s-app": "kube-dns"}
    pod["spec"]["hostNetwork"] = False
    pod["spec"]["dnsPolicy"] = "Default"
    pod["spec"]["containers"][0]["ports"] = [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                             {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}]
    return pod
