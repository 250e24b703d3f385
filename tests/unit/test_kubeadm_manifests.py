"""kubeadm/manifests.py: the static pods init and join write, read back through the kubelet's
own manifest parser, and each command line parsed by the real command's flags."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import pytest
import yaml

from kubeadm import manifests
from kubeadm.manifests import ControlPlane
from kubelab.cli.main import COMMANDS, common_parser
from kubelab.cli.manifest import parse_doc

CP = ControlPlane(etc_dir=Path("/etc/kubelab"), var_dir=Path("/var/lib/kubelab"), advertise_address="192.168.56.10")


def parse_argv(argv: list[str]) -> argparse.Namespace:
    """argv as the container runs it, parsed by the kubelab command it names."""
    assert argv[:3] == [sys.executable, "-m", "kubelab.cli.main"]
    cmd = argv[3]
    parser = argparse.ArgumentParser(prog="kubelab", exit_on_error=False)
    importlib.import_module(COMMANDS[cmd][0]).register(parser.add_subparsers(dest="command"), [common_parser()])
    return parser.parse_args(argv[3:])


@pytest.mark.parametrize("name", list(manifests.CONTROL_PLANE))
def test_control_plane_pods_are_kubeadms_shape(name):
    pod = manifests.CONTROL_PLANE[name](CP)
    parsed = parse_doc(yaml.safe_load(manifests.to_yaml(pod)), "x.yaml", 1)  # what the kubelet reads
    assert parsed.metadata.name == name and parsed.metadata.namespace == "kube-system"
    assert dict(parsed.metadata.labels) == {"component": name, "tier": "control-plane"}
    assert parsed.spec.hostNetwork
    c = parsed.spec.containers[0]
    assert (c.image, c.imagePullPolicy) == ("busybox", "Never")
    mounts = {m.mountPath: m.readOnly for m in c.volumeMounts}
    for p in manifests.environment_paths():
        assert mounts[p] is True, f"{name}: the environment path {p} is not mounted read-only"
    vols = {v.name: v.hostPath.path for v in parsed.spec.volumes}
    assert all(vols[m.name] == m.mountPath for m in c.volumeMounts)  # same path inside and out


def test_environment_holds_interpreter_venv_and_source():
    paths = manifests.environment_paths()
    covered = lambda p: any(p == q or p.startswith(q + "/") for q in paths)  # noqa: E731
    assert covered(sys.base_prefix) and covered(sys.prefix) and covered(str(manifests.SOURCE_DIR)) and "/usr" in paths
    assert len(paths) == len(set(paths))


def test_apiserver_flags():
    c = manifests.apiserver_pod(CP)["spec"]["containers"][0]
    argv = c["command"]
    args = parse_argv(argv)
    assert args.listen == "192.168.56.10:6443" and args.pki_dir == "/etc/kubelab/pki"
    # kubeadm's: etcd over TLS, with the API server's own client certificate of etcd's CA
    assert args.etcd_servers == "https://127.0.0.1:2379"
    assert (args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile) == (
        "/etc/kubelab/pki/etcd/ca.crt", "/etc/kubelab/pki/apiserver-etcd-client.crt",
        "/etc/kubelab/pki/apiserver-etcd-client.key")
    mounts = {m["mountPath"]: m["readOnly"] for m in c["volumeMounts"]}
    assert mounts["/etc/kubelab/pki"] is True


def test_controller_manager_and_scheduler_flags():
    cm = parse_argv(manifests.controller_manager_pod(CP)["spec"]["containers"][0]["command"])
    assert cm.config == "/etc/kubelab/controller-manager.conf" and cm.cluster_cidr == "10.244.0.0/16"
    assert (cm.cluster_signing_cert_file, cm.cluster_signing_key_file) == ("/etc/kubelab/pki/ca.crt",
                                                                           "/etc/kubelab/pki/ca.key")
    # the node lifecycle timings stay the controller manager's own defaults
    assert "--node-monitor-grace-period" not in manifests.controller_manager_pod(CP)["spec"]["containers"][0]["command"]
    sched = parse_argv(manifests.scheduler_pod(CP)["spec"]["containers"][0]["command"])
    assert sched.config == "/etc/kubelab/scheduler.conf"


def test_etcd_data_is_writable_and_on_the_host():
    pod = manifests.etcd_pod(CP)
    c = pod["spec"]["containers"][0]
    argv = c["command"]
    assert "--data-dir" in argv and argv[argv.index("--data-dir") + 1] == "/var/lib/kubelab/etcd"
    mounts = {m["mountPath"]: m["readOnly"] for m in c["volumeMounts"]}
    assert mounts["/var/lib/kubelab/etcd"] is False
    assert mounts["/etc/kubelab/pki/etcd"] is True
    assert "--client-cert-auth=true" in argv and "--peer-client-cert-auth=true" in argv
    assert argv[argv.index("--listen-client-urls") + 1] == "https://127.0.0.1:2379"
    assert argv[argv.index("--trusted-ca-file") + 1] == "/etc/kubelab/pki/etcd/ca.crt"


def test_overlay_pod_is_privileged_with_run_flannel():
    pod = manifests.overlay_pod(kubelet_conf=Path("/etc/kubelab/kubelet.conf"), node_name="w1", iface="eth1",
                                node_ip="192.168.56.11")
    parsed = parse_doc(yaml.safe_load(manifests.to_yaml(pod)), "x.yaml", 1)
    c = parsed.spec.containers[0]
    assert parsed.spec.hostNetwork and c.securityContext.privileged
    mounts = {m.mountPath: m.readOnly for m in c.volumeMounts}
    assert mounts["/run/flannel"] is False and mounts["/etc/kubelab/kubelet.conf"] is True
    args = parse_argv(list(c.command))
    assert (args.config, args.node_name, args.iface, args.node_ip) == ("/etc/kubelab/kubelet.conf", "w1", "eth1",
                                                                       "192.168.56.11")


def test_write_is_whole_and_hidden_until_done(tmp_path):
    path = manifests.write(tmp_path / "manifests", "etcd", manifests.etcd_pod(CP))
    assert path == tmp_path / "manifests" / "etcd.yaml"
    assert [p.name for p in path.parent.iterdir()] == ["etcd.yaml"]
    assert yaml.safe_load(path.read_text())["metadata"]["name"] == "etcd"
