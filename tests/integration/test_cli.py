"""The CLI as a user types it, against a real control plane (subprocesses all the way)."""
from __future__ import annotations

import json
import time

import yaml


def test_lecture_walkthrough(control_plane):
    k = control_plane.kubelab
    out = k("get", "ns").stdout
    for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
        assert ns in out
    assert k("create", "ns", "dev").stdout.strip() == "namespace/dev created"
    r = k("create", "ns", "dev", check=False)
    assert r.returncode == 1 and r.stderr.strip() == 'Error from server (AlreadyExists): namespaces "dev" already exists'
    assert k("run", "nginx", "--image=nginx", "-n", "dev").stdout.strip() == "pod/nginx created"
    lines = k("get", "pods", "-n", "dev").stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert lines[1].split()[:4] == ["nginx", "0/1", "Pending", "0"]
    pod = json.loads(k("get", "pod", "nginx", "-n", "dev", "-o", "json").stdout)
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
    assert pod["metadata"]["labels"] == {"run": "nginx"}
    assert pod["spec"]["containers"][0]["image"] == "nginx"
    assert k("get", "pods", "-n", "dev", "-o", "name").stdout.strip() == "pod/nginx"
    wide = k("get", "pods", "-A", "-o", "wide").stdout.splitlines()[0].split()
    assert wide[:2] == ["NAMESPACE", "NAME"] and "IP" in wide and "NODE" in wide


def test_errors_read_like_kubectl(control_plane):
    k = control_plane.kubelab
    r = k("get", "pod", "nosuch", "-n", "default", check=False)
    assert r.returncode == 1 and r.stderr.strip() == 'Error from server (NotFound): pods "nosuch" not found'
    r = k("create", "ns", "Bad_Name", check=False)
    assert r.returncode == 1 and r.stderr.startswith('Error from server (Invalid): namespaces "Bad_Name" is invalid: metadata.name')
    r = k("get", "widgets", check=False)
    assert r.returncode == 1 and r.stderr.strip() == 'error: the server doesn\'t have a resource type "widgets"'
    r = k("get", "pods", "-n", "empty-ns-nobody-made", check=False)
    assert r.returncode == 0 and "No resources found in empty-ns-nobody-made namespace." in r.stderr
    r = control_plane.kubelab("get", "ns", "--config", "/nonexistent/config", check=False)
    assert r.returncode == 1 and "config /nonexistent/config: file not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_apply_multi_document_create_configure_unchanged(control_plane, tmp_path):
    k = control_plane.kubelab
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "applied"}}]
    docs += [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i}", "namespace": "applied",
                                                             "labels": {"app": "many"}},
              "spec": {"containers": [{"name": "c", "image": "busybox",
                                       "resources": {"requests": {"cpu": "10m", "memory": 16777216}}}]}}
             for i in range(20)]
    f = tmp_path / "many.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    out = k("apply", "-f", str(f)).stdout.splitlines()
    assert out[0] == "namespace/applied created" and out[1:] == [f"pod/p{i} created" for i in range(20)]
    out = k("apply", "-f", str(f)).stdout.splitlines()
    assert set(out) == {"namespace/applied unchanged"} | {f"pod/p{i} unchanged" for i in range(20)}
    docs[1]["metadata"]["labels"]["extra"] = "yes"
    f.write_text(yaml.safe_dump_all(docs))
    out = k("apply", "-f", str(f)).stdout.splitlines()
    assert "pod/p0 configured" in out and "pod/p1 unchanged" in out
    assert "p0" in k("get", "pods", "-n", "applied", "-l", "extra=yes").stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n  - name: c\n    imagee: busybox\n")
    r = k("apply", "-f", str(bad), check=False)
    assert r.returncode == 1 and 'unknown field "spec.containers[0].imagee"' in r.stderr


def test_describe_and_delete(control_plane):
    k = control_plane.kubelab
    k("create", "ns", "desc")
    k("run", "web", "--image=busybox", "-n", "desc", "--port", "8080", "--env", "MODE=test", "--", "sleep", "3600")
    out = k("describe", "pod", "web", "-n", "desc").stdout
    assert "Name:               web" in out and "Namespace:          desc" in out
    assert "Port:           8080/TCP" in out and "MODE:  test" in out and "Args:           sleep 3600" in out
    assert "Events:" in out
    assert k("delete", "pod", "web", "-n", "desc").stdout.strip() == 'pod "web" deleted'
    r = k("get", "pod", "web", "-n", "desc", check=False)
    assert r.returncode == 1
    assert k("delete", "ns", "desc").stdout.strip() == 'namespace "desc" deleted'
    r = k("get", "ns", "desc", check=False)
    assert r.returncode == 1 and "NotFound" in r.stderr


def test_get_watch_prints_changes(control_plane):
    import subprocess
    from .conftest import KUBELAB
    control_plane.kubelab("create", "ns", "watched")
    p = subprocess.Popen(KUBELAB + ["get", "pods", "-n", "watched", "-w"], env=control_plane.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        control_plane.kubelab("run", "w1", "--image=busybox", "-n", "watched")
        time.sleep(1.5)
    finally:
        p.terminate()
        out, _ = p.communicate(timeout=10)
    assert "w1" in out and "Pending" in out
