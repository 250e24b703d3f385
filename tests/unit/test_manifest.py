"""Manifests to API messages and back (kubelab.cli.manifest), and apply's three-way merge:
strict decoding with kubectl's wording, YAML numbers where the API wants strings, files,
directories and streams."""
import io
import json

import pytest

from kubelab.cli import apply, manifest
from kubelab.cli.common import CLIError
from kubelab.cli.manifest import load, parse_doc, to_dict

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
       "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}],
                                "resources": {"requests": {"cpu": 1, "memory": 128974848}, "limits": {"cpu": 0.5}},
                                "livenessProbe": {"httpGet": {"path": "/", "port": 80}}}],
                "volumes": [{"name": "logs", "emptyDir": {}}]}}


def test_pod_manifest_maps_one_to_one():
    p = parse_doc(POD, "f.yaml", 1, "dev")
    assert p.metadata.namespace == "dev"
    c = p.spec.containers[0]
    assert c.resources.requests["cpu"] == "1" and c.resources.requests["memory"] == "128974848"
    assert c.resources.limits["cpu"] == "0.5"
    assert c.livenessProbe.httpGet.port.number_value == 80
    assert p.spec.volumes[0].HasField("emptyDir")
    assert parse_doc({**POD, "metadata": {"name": "x"}}, "f.yaml", 1).metadata.namespace == "default"


def test_unknown_field_is_named():
    bad = {**POD, "spec": {"containers": [{"name": "c", "imagee": "nginx"}]}}
    with pytest.raises(CLIError) as e:
        parse_doc(bad, "f.yaml", 2)
    assert str(e.value) == ('error parsing f.yaml (document 2): Pod in version "v1" cannot be handled as a Pod: '
                            'strict decoding error: unknown field "spec.containers[0].imagee"')


def test_every_unknown_field_is_named():
    bad = {**POD, "spec": {"containers": [{"name": "c", "image": "x"}], "nodname": "n1"}, "extra": 1}
    with pytest.raises(CLIError) as e:
        parse_doc(bad, "f.yaml", 1)
    assert str(e.value).endswith('strict decoding error: unknown field "spec.nodname", unknown field "extra"')


@pytest.mark.parametrize("spec,want", [
    ({"containers": [{"name": "c", "image": 5}]},
     "json: cannot unmarshal number into Go struct field Container.spec.containers.image of type string"),
    ({"containers": {"name": "c"}},
     "json: cannot unmarshal object into Go struct field PodSpec.spec.containers of type []v1.Container"),
    ({"containers": [{"name": "c", "ports": [{"containerPort": "http"}]}]},
     "json: cannot unmarshal string into Go struct field ContainerPort.spec.containers.ports.containerPort "
     "of type int32"),
    ({"hostNetwork": "yes"}, "json: cannot unmarshal string into Go struct field PodSpec.spec.hostNetwork of type bool"),
])
def test_type_errors_worded_as_the_api_server(spec, want):
    with pytest.raises(CLIError) as e:
        parse_doc({**POD, "spec": spec}, "f.yaml", 1)
    assert str(e.value) == f'error parsing f.yaml (document 1): Pod in version "v1" cannot be handled as a Pod: {want}'


def test_unknown_kind_or_version():
    with pytest.raises(CLIError, match='unable to recognize "f.yaml": no matches for kind "Deployment" in version '
                                       '"apps/v1"'):
        parse_doc({"apiVersion": "apps/v1", "kind": "Deployment"}, "f.yaml", 1)
    with pytest.raises(CLIError, match='no matches for kind "Lease" in version "v1"'):
        parse_doc({"apiVersion": "v1", "kind": "Lease", "metadata": {"name": "x"}}, "f.yaml", 1)
    lease = parse_doc({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "x"},
                       "spec": {"holderIdentity": "me", "leaseDurationSeconds": 40}}, "f.yaml", 1)
    assert lease.spec.leaseDurationSeconds == 40
    with pytest.raises(CLIError, match="Object 'Kind' is missing"):
        parse_doc({"apiVersion": "v1", "metadata": {"name": "x"}}, "f.yaml", 1)


def test_yaml_numbers_and_booleans_become_strings_where_the_api_wants_strings(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("""
apiVersion: v1
kind: Pod
metadata:
  name: p
  labels: {version: 2, canary: true, zone: on}
  annotations: {ratio: 0.5, owner: null}
spec:
  nodeSelector: {gpu: false}
  containers:
  - name: c
    image: busybox
    command: null
    resources: {requests: {cpu: 1, memory: 128974848}, limits: {cpu: 1.5}}
  volumes:
  - name: scratch
    emptyDir: {sizeLimit: 1000000}
""")
    p = load([str(f)])[0].obj
    assert dict(p.metadata.labels) == {"version": "2", "canary": "true", "zone": "on"}
    assert dict(p.metadata.annotations) == {"ratio": "0.5"}  # null dropped
    assert dict(p.spec.nodeSelector) == {"gpu": "false"}
    r = p.spec.containers[0].resources
    assert dict(r.requests) == {"cpu": "1", "memory": "128974848"} and dict(r.limits) == {"cpu": "1.5"}
    assert p.spec.volumes[0].emptyDir.sizeLimit == "1000000"


def test_multi_document_files_directories_lists_and_json(tmp_path, monkeypatch):
    d = tmp_path / "m"
    d.mkdir()
    (d / "b.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n---\n---\n"
                              "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: b}\n"
                              "spec: {containers: [{name: c, image: i}]}\n")
    (d / "a.json").write_text(json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}))
    (d / "c.yml").write_text("apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, "
                             "metadata: {name: c1}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: c2}}\n")
    (d / "notes.txt").write_text("not a manifest")
    docs = load([str(d)])
    assert [(d.kind.kind, d.obj.metadata.name) for d in docs] == [
        ("Namespace", "a"), ("Namespace", "b"), ("Pod", "p"), ("Namespace", "c1"), ("Namespace", "c2")]
    assert docs[2].index == 3 and docs[2].source.endswith("b.yaml")
    monkeypatch.setattr("sys.stdin", io.StringIO("apiVersion: v1\nkind: Namespace\nmetadata: {name: s}\n"))
    assert load(["-"])[0].source == "STDIN"
    with pytest.raises(CLIError, match='the path "nope.yaml" does not exist'):
        load(["nope.yaml"])
    (tmp_path / "empty.yaml").write_text("---\n")
    with pytest.raises(CLIError, match="no objects passed to apply"):
        load([str(tmp_path / "empty.yaml")])
    (tmp_path / "broken.yaml").write_text("metadata: {name: x\n")
    with pytest.raises(CLIError, match=r"error converting YAML to JSON: yaml: line 2"):
        load([str(tmp_path / "broken.yaml")])


def test_namespace_rules():
    ns = parse_doc({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "namespace": "y"}}, "f", 1)
    assert ns.metadata.namespace == ""  # cluster-scoped
    with pytest.raises(CLIError, match='namespace from the provided object "a" does not match the namespace "b"'):
        parse_doc({**POD, "metadata": {"name": "p", "namespace": "a"}}, "f", 1, "b", enforce_namespace=True)


def test_round_trip_kubernetes_shape():
    p = parse_doc(POD, "f.yaml", 1, "dev")
    p.spec.terminationGracePeriodSeconds = 30
    d = to_dict(p)
    assert list(d)[:3] == ["apiVersion", "kind", "metadata"] and d["status"] == {}
    assert d["spec"]["terminationGracePeriodSeconds"] == 30
    assert d["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] == 80
    assert to_dict(manifest.from_dict(d)) == d


def test_three_way_merge_keeps_others_fields_and_drops_removed_ones():
    live = {"metadata": {"name": "p", "uid": "u1", "labels": {"app": "web", "team": "a", "added-by-hand": "x"}},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "c", "image": "v1", "imagePullPolicy": "Always",
                 "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                {"name": "sidecar", "image": "s"}],
                "tolerations": [{"key": "a"}, {"key": "b"}]}}
    last = {"metadata": {"name": "p", "labels": {"app": "web", "team": "a"}},
            "spec": {"containers": [{"name": "c", "image": "v1", "ports": [{"containerPort": 80}]},
                                    {"name": "sidecar", "image": "s"}]}}
    new = {"metadata": {"name": "p", "labels": {"app": "web"}},
           "spec": {"containers": [{"name": "c", "image": "v2", "ports": [{"containerPort": 80}]}],
                    "tolerations": [{"key": "c"}]}}
    got = apply.merge(live, new, last)
    assert got["metadata"] == {"name": "p", "uid": "u1", "labels": {"app": "web", "added-by-hand": "x"}}
    assert got["spec"]["nodeName"] == "n1"  # the scheduler's, never in a manifest
    assert got["spec"]["containers"] == [{"name": "c", "image": "v2", "imagePullPolicy": "Always",
                                          "ports": [{"containerPort": 80, "protocol": "TCP"}]}]
    assert got["spec"]["tolerations"] == [{"key": "c"}]  # lists without a merge key are replaced
    assert live["spec"]["containers"][0]["image"] == "v1"  # inputs untouched
    assert apply.merge(live, last, last) == live  # applying the same manifest again changes nothing


def test_apply_is_unchanged_after_create():
    d = manifest.Doc("f.yaml", 1, parse_doc(POD, "f.yaml", 1, "dev"))
    applied = apply.applied_config(d)
    assert json.loads(applied)["metadata"] == {"name": "web", "namespace": "dev", "labels": {"app": "web"}}
    created = type(d.obj)()
    created.CopyFrom(d.obj)
    created.metadata.annotations[apply.LAST_APPLIED] = applied
    created.metadata.uid, created.spec.nodeName = "u1", "n1"
    created.spec.containers[0].imagePullPolicy = "Always"  # server defaults
    live = to_dict(created)
    assert apply.desired(live, d, applied) == live
    d.obj.spec.containers[0].image = "nginx:2"
    changed = apply.desired(live, d, apply.applied_config(d))
    assert changed["spec"]["containers"][0]["image"] == "nginx:2"
    assert changed["spec"]["nodeName"] == "n1" and changed["metadata"]["uid"] == "u1"
