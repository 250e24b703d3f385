"""securityContext.privileged from a manifest (the CLI's and the static pod reader's decoder)
to the API server's validation and the kubelet's ContainerSpec."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from kubelab.cli.common import CLIError
from kubelab.cli.manifest import parse_doc
from master.apiserver import validation as val
from worker.kubelet.podsync import PodSyncer
from worker.kubelet.staticpods import StaticPods

POD = """
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: kube-system}
spec:
  hostNetwork: true
  restartPolicy: Always
  initContainers: [{name: init, image: busybox, securityContext: {privileged: true}}]
  containers:
  - {name: agent, image: busybox, securityContext: {privileged: true}}
  - {name: plain, image: busybox}
"""


def test_manifest_and_static_pod_carry_privileged(tmp_path):
    pod = parse_doc(yaml.safe_load(POD), "test", 1)
    assert pod.spec.initContainers[0].securityContext.privileged
    assert pod.spec.containers[0].securityContext.privileged
    assert not pod.spec.containers[1].HasField("securityContext")
    (tmp_path / "agent.yaml").write_text(POD)
    [static] = StaticPods(tmp_path, "n1").scan().values()
    assert static.spec.containers[0].securityContext.privileged


def test_privileged_must_be_a_bool():
    doc = yaml.safe_load(POD)
    doc["spec"]["containers"][0]["securityContext"]["privileged"] = "yes"
    with pytest.raises(CLIError, match="cannot unmarshal string into Go struct field SecurityContext.spec.containers.securityContext.privileged of type bool"):
        parse_doc(doc, "test", 1)
    doc["spec"]["containers"][0]["securityContext"] = {"privilegd": True}
    with pytest.raises(CLIError, match='unknown field "spec.containers\\[0\\].securityContext.privilegd"'):
        parse_doc(doc, "test", 1)


def test_cluster_policy_refuses_privileged_when_off():
    pod = parse_doc(yaml.safe_load(POD), "test", 1)
    errs: list = []
    val.validate_pod_spec(pod.spec, errs)
    assert errs == []
    val.validate_pod_spec(pod.spec, errs, allow_privileged=False)
    assert [str(e) for e in errs] == [
        "spec.initContainers[0].securityContext.privileged: Forbidden: disallowed by cluster policy",
        "spec.containers[0].securityContext.privileged: Forbidden: disallowed by cluster policy"]


def test_kubelet_passes_privileged_to_the_runtime(tmp_path):
    pod = parse_doc(yaml.safe_load(POD), "test", 1)
    pod.metadata.uid = "u1"
    sync = PodSyncer.__new__(PodSyncer)  # spec() needs only mounts() of the instance
    sync.mounts = lambda pod, c: []
    state = SimpleNamespace(netns_path="", pod_ip="", resolv_conf=None)
    specs = [sync.spec(pod, c, 0, state, tmp_path / "log") for c in
             (pod.spec.initContainers[0], pod.spec.containers[0], pod.spec.containers[1])]
    assert [s.privileged for s in specs] == [True, True, False]
