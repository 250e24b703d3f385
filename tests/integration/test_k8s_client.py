"""The official `kubernetes` Python client against kubelab's HTTP API: configured from the
control plane's admin config by kubernetes.config.load_kube_config, as any script would be,
it lists, creates, reads, watches (kubernetes.watch.Watch) and deletes pods, reads their
logs from a real kubelet, and gets Kubernetes' errors as ApiException with status and reason.

One `kubelab control-plane` for the module and one real kubelet (test_kubectl.RealNode: runc
containers, a bridge of its own, pod range CLUSTER_CIDR); the pods run busybox from the node's
own image store.
"""
from __future__ import annotations

import json
import queue
import re
import threading
import time

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException

from .conftest import launch_control_plane, stop_control_plane
from .test_kubectl import RealNode, until

CLUSTER_CIDR = "10.205.0.0/16"  # apart from test_kubectl's 10.204/16: both may run at once
NODE = "client-real-node"
NS = "default"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("k8sclient")
    cp = launch_control_plane(d, "--cluster-cidr", CLUSTER_CIDR)
    node = RealNode(cp, d / "node", NODE, CLUSTER_CIDR)
    try:
        node.start()
        until(lambda: re.search(rf"^{NODE} +Ready ", cp.kubelab("get", "nodes", check=False).stdout, re.M),
              what="the real node Ready")
        yield cp
    finally:
        try:
            node.stop()
        finally:
            stop_control_plane(cp)
    left = node.leftovers()
    assert not left, f"the real node left behind: {left}"


@pytest.fixture(scope="module")
def core(cluster):
    cfg = k8s.Configuration()
    k8s_config.load_kube_config(config_file=str(cluster.config), client_configuration=cfg)
    api = k8s.ApiClient(cfg)
    try:
        yield k8s.CoreV1Api(api)
    finally:
        api.close()


def busybox(name: str, script: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {"app": "client-test"}},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "busybox", "imagePullPolicy": "Never",
                                     "command": ["sh", "-c", script]}]}}


def gone(core, name: str, timeout: float = 60) -> None:
    def missing():
        try:
            core.read_namespaced_pod(name, NS)
        except ApiException as e:
            return e.status == 404
        return False
    until(missing, timeout, what=f"pod {name} gone")


def test_version_and_list(core, cluster):
    info = k8s.VersionApi(core.api_client).get_code()
    assert re.fullmatch(r"v\d+\.\d+\.\d+.*", info.git_version), info
    nodes = core.list_node()
    assert [n.metadata.name for n in nodes.items] == [NODE]
    ready = [c.status for c in nodes.items[0].status.conditions if c.type == "Ready"]
    assert ready == ["True"]
    names = {n.metadata.name for n in core.list_namespace().items}
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= names
    pods = core.list_namespaced_pod(NS)
    assert pods.items == [] and pods.metadata.resource_version


def test_create_read_list_delete_and_logs(core):
    made = core.create_namespaced_pod(NS, busybox("hello", "echo hello-from-client; exec sleep 3600"))
    assert made.metadata.name == "hello" and made.metadata.uid and made.metadata.resource_version
    assert made.spec.containers[0].image == "busybox"
    until(lambda: core.read_namespaced_pod("hello", NS).status.phase == "Running", 90, what="hello Running")
    pod = core.read_namespaced_pod("hello", NS)
    assert pod.spec.node_name == NODE and pod.status.pod_ip.startswith("10.205.")
    assert pod.status.container_statuses[0].ready is True
    assert pod.status.container_statuses[0].restart_count == 0
    listed = core.list_namespaced_pod(NS, label_selector="app=client-test")
    assert [p.metadata.name for p in listed.items] == ["hello"]
    assert core.list_namespaced_pod(NS, label_selector="app=other").items == []
    # a dict body goes as a strategic merge patch: the labels merge, the containers stay
    patched = core.patch_namespaced_pod("hello", NS, {"metadata": {"labels": {"patched": "yes"}}})
    assert patched.metadata.labels == {"app": "client-test", "patched": "yes"}
    assert [c.name for c in patched.spec.containers] == ["main"]
    assert [p.metadata.name for p in core.list_pod_for_all_namespaces(field_selector="metadata.name=hello").items] \
        == ["hello"]

    until(lambda: "hello-from-client" in core.read_namespaced_pod_log("hello", NS), 30, what="hello's log")
    assert core.read_namespaced_pod_log("hello", NS, container="main") == "hello-from-client\n"
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod_log("hello", NS, container="nosuch")
    assert e.value.status == 400 and "nosuch" in json.loads(e.value.body)["message"]

    st = core.delete_namespaced_pod("hello", NS, grace_period_seconds=1)
    assert st.metadata.name == "hello" and st.metadata.deletion_timestamp is not None
    gone(core, "hello")


def test_watch_sees_added_modified_deleted(core):
    rv = core.list_namespaced_pod(NS).metadata.resource_version
    events: queue.Queue = queue.Queue()
    w = k8s_watch.Watch()

    def stream():
        try:
            for ev in w.stream(core.list_namespaced_pod, NS, resource_version=rv, timeout_seconds=120,
                               label_selector="app=watched"):
                events.put((ev["type"], ev["object"].metadata.name, ev["object"].status.phase,
                            ev["object"].metadata.deletion_timestamp is not None))
        except Exception as exc:  # noqa: BLE001 - handed to the test, which fails with it
            events.put(("ERROR", repr(exc), None, None))
        events.put(None)
    t = threading.Thread(target=stream, daemon=True)
    t.start()
    try:
        core.create_namespaced_pod(NS, busybox("watched", "exec sleep 3600", {"app": "watched"}))
        core.create_namespaced_pod(NS, busybox("unwatched", "exec sleep 3600", {"app": "other"}))
        seen = []

        def until_event(pred, what):
            end = time.monotonic() + 90
            while time.monotonic() < end:
                try:
                    ev = events.get(timeout=max(0.01, end - time.monotonic()))
                except queue.Empty:
                    break
                assert ev is not None and ev[0] != "ERROR", f"the watch ended: {ev} after {seen}"
                seen.append(ev)
                if pred(ev):
                    return ev
            raise AssertionError(f"no {what} in the watch: {seen}")
        until_event(lambda ev: ev[:2] == ("ADDED", "watched"), "ADDED")
        until_event(lambda ev: ev[:3] == ("MODIFIED", "watched", "Running"), "MODIFIED to Running")
        core.delete_namespaced_pod("watched", NS, grace_period_seconds=1)
        until_event(lambda ev: ev[0] == "MODIFIED" and ev[3], "MODIFIED with a deletionTimestamp")
        until_event(lambda ev: ev[:2] == ("DELETED", "watched"), "DELETED")
        assert all(ev[1] == "watched" for ev in seen), seen  # the label selector held
    finally:
        w.stop()
        for name in ("watched", "unwatched"):
            try:
                core.delete_namespaced_pod(name, NS, grace_period_seconds=0)
            except ApiException as e:
                if e.status != 404:
                    raise
        gone(core, "unwatched")


def test_errors_as_api_exceptions(core):
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod("nosuch", NS)
    body = json.loads(e.value.body)
    assert (e.value.status, body["kind"], body["reason"], body["code"]) == (404, "Status", "NotFound", 404)
    assert body["message"] == 'pods "nosuch" not found'
    assert body["details"] == {"name": "nosuch", "kind": "pods"}
    core.create_namespace({"metadata": {"name": "client-twice"}})
    with pytest.raises(ApiException) as e:
        core.create_namespace({"metadata": {"name": "client-twice"}})
    assert (e.value.status, json.loads(e.value.body)["reason"]) == (409, "AlreadyExists")
    with pytest.raises(ApiException) as e:
        core.create_namespaced_pod(NS, {"metadata": {"name": "noimage"}, "spec": {"containers": [{"name": "c"}]}})
    body = json.loads(e.value.body)
    assert (e.value.status, body["reason"]) == (422, "Invalid")
    assert {"reason": "FieldValueRequired", "message": "Required value",
            "field": "spec.containers[0].image"} in body["details"]["causes"], body
