"""The real kubectl reading kubelab's OpenAPI (master/apiserver/rest/openapi.py) from a
`kubelab control-plane`: `explain` as against a real cluster, and `create`/`apply` with
validation on (kubectl's default, --validate=strict) accepting a valid manifest and refusing a
typo'd field with kubectl's message. kubectl validates on the server because the v3 document's
PATCH operations list fieldValidation; the requests it sends show it.

kubectl runs with KUBECONFIG = the control plane's admin config and a HOME of its own (its
discovery and OpenAPI cache); every call has a timeout.
"""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from .conftest import ROOT, launch_control_plane, stop_control_plane

KUBECTL = str(ROOT / ".venv" / "bin" / "kubectl")

TYPO = """\
apiVersion: v1
kind: Pod
metadata: {name: typo}
spec:
  containers:
  - {name: c, image: busybox, imagee: busybox}
"""
VALID = """\
apiVersion: v1
kind: Pod
metadata: {name: valid, labels: {app: web}}
spec:
  containers:
  - name: c
    image: busybox
    command: [sleep, "100000"]
    env: [{name: A, value: "1"}]
    ports: [{containerPort: 80}]
"""


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory):
    d = tmp_path_factory.mktemp("openapi")
    cp = launch_control_plane(d)
    home = d / "home"
    home.mkdir()
    env = dict(os.environ, KUBECONFIG=str(cp.config), HOME=str(home))
    env.pop("KUBELAB_CONFIG", None)

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([KUBECTL, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)
    try:
        yield run
    finally:
        stop_control_plane(cp)


def test_explain_pod_spec_containers(kubectl):
    r = kubectl("explain", "pod.spec.containers")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert re.search(r"^KIND:\s+Pod$", out, re.M) and re.search(r"^VERSION:\s+v1$", out, re.M), out
    assert re.search(r"^FIELD:\s+containers <\[\]Container>$", out, re.M), out
    desc = out.split("DESCRIPTION:")[1].split("FIELDS:")[0]
    assert "List of containers belonging to the pod." in desc
    assert "A single application container that you want to run within a pod." in desc
    fields = out.split("FIELDS:")[1]
    assert re.search(r"^  name\t<string> -required-$", fields, re.M), fields
    assert re.search(r"^  image\t<string>$", fields, re.M)
    assert re.search(r"^  ports\t<\[\]ContainerPort>$", fields, re.M)
    assert "Container image name." in fields


def test_explain_top_level_other_groups_and_unknown_fields(kubectl):
    r = kubectl("explain", "pods")
    assert r.returncode == 0, r.stderr
    assert "Pod is a collection of containers that can run on a host." in r.stdout
    assert re.search(r"^  spec\t<PodSpec>\n    Specification of the desired behavior of the pod\.", r.stdout, re.M)
    r = kubectl("explain", "pod.spec")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^  restartPolicy\t<string>\n  enum: Always, Never, OnFailure$", r.stdout, re.M), r.stdout
    r = kubectl("explain", "lease.spec.holderIdentity")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^GROUP:\s+coordination\.k8s\.io$", r.stdout, re.M)
    assert re.search(r"^FIELD:\s+holderIdentity <string>$", r.stdout, re.M)
    r = kubectl("explain", "pod.spec.containers.livenessProbe.httpGet")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^  port\t<IntOrString> -required-$", r.stdout, re.M), r.stdout
    r = kubectl("explain", "pod.spec.containers.resources")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^  limits\t<map\[string\]Quantity>$", r.stdout, re.M), r.stdout
    r = kubectl("explain", "pod.spec.nosuch")
    assert r.returncode != 0
    assert 'field "nosuch" does not exist' in r.stderr


def test_typo_refused_with_kubectls_message_by_create_and_apply(kubectl):
    for verb in ("create", "apply"):
        r = kubectl(verb, "-f", "-", "-v=6", stdin=TYPO)
        assert r.returncode == 1, (verb, r.stdout, r.stderr)
        assert 'unknown field "spec.containers[0].imagee"' in r.stderr, (verb, r.stderr)
        assert "Error from server (BadRequest)" in r.stderr
        # the server validated: kubectl read fieldValidation off the v3 document and asked for Strict
        post = [line for line in r.stderr.splitlines() if 'verb="POST"' in line]
        assert post and "fieldValidation=Strict" in post[-1], post
        assert "/openapi/v3/api/v1?hash=" in r.stderr
    r = kubectl("get", "pod", "typo")
    assert r.returncode == 1 and 'pods "typo" not found' in r.stderr


def test_typo_only_warned_with_validate_warn_and_dropped(kubectl):
    r = kubectl("create", "-f", "-", "--validate=warn", stdin=TYPO.replace("name: typo", "name: warned"))
    assert r.returncode == 0, r.stderr
    assert 'unknown field "spec.containers[0].imagee"' in r.stderr
    r = kubectl("get", "pod", "warned", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["spec"]["containers"][0] == {**json.loads(r.stdout)["spec"]["containers"][0],
                                                             "name": "c", "image": "busybox"}
    assert "imagee" not in r.stdout


def test_valid_manifest_applied_then_unchanged(kubectl):
    r = kubectl("apply", "-f", "-", stdin=VALID)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "pod/valid created"
    r = kubectl("apply", "-f", "-", stdin=VALID)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "pod/valid unchanged"
    # an image change (a pod allows it): the patch names the container by its merge key, so
    # the rest of the container (env, ports) is kept
    r = kubectl("apply", "-f", "-", stdin=VALID.replace("image: busybox", "image: busybox:1.36"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "pod/valid configured"
    c = json.loads(kubectl("get", "pod", "valid", "-o", "json").stdout)["spec"]["containers"]
    assert [(x["name"], x["image"], x["env"], x["ports"][0]["containerPort"]) for x in c] == [
        ("c", "busybox:1.36", [{"name": "A", "value": "1"}], 80)]


REVIEW = """\
apiVersion: authorization.k8s.io/v1
kind: SelfSubjectAccessReview
spec: {resourceAttributes: {verb: get, resource: pods}}
"""


def test_create_only_kind_validated_on_the_client_against_v2(kubectl):
    """A SelfSubjectAccessReview has no PATCH to list fieldValidation: kubectl validates it
    itself, against /openapi/v2 in protobuf, and prints its own message for a typo."""
    r = kubectl("create", "-f", "-", "-o", "jsonpath={.status.allowed}", stdin=REVIEW)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "true"
    r = kubectl("create", "-f", "-", "-v=6", stdin=REVIEW.replace("resourceAttributes", "resourceAttributess"))
    assert r.returncode == 1
    assert ('error validating data: ValidationError(SelfSubjectAccessReview.spec): unknown field '
            '"resourceAttributess" in io.k8s.api.authorization.v1.SelfSubjectAccessReviewSpec') in r.stderr, r.stderr
    assert '/openapi/v2' in r.stderr and 'verb="POST"' not in r.stderr


def test_explain_from_v2(kubectl):
    r = kubectl("explain", "pod.spec.containers", "--output=plaintext-openapiv2")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^RESOURCE:\s+containers <\[\]Object>$", r.stdout, re.M), r.stdout
    assert "List of containers belonging to the pod." in r.stdout
    assert re.search(r"^   name\t<string> -required-$", r.stdout, re.M), r.stdout


def test_v2_document_is_json(kubectl):
    r = kubectl("get", "--raw", "/openapi/v2")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["swagger"] == "2.0"
    assert "io.k8s.api.core.v1.Pod" in doc["definitions"]
