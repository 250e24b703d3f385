"""PATCH semantics (master/apiserver/patch.py and strategicmerge.py) and the strategic-merge
metadata they read (kubelab/api/patchmeta.py): RFC 7386 merge patch, RFC 6902 JSON patch, and Kubernetes'
strategic merge patch with the patches `kubectl apply` (three-way, with $setElementOrder,
$patch: delete, $deleteFromPrimitiveList), `kubectl label`/`annotate` and `kubectl patch` send."""
from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubelab.api import kinds, patchmeta
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import BadRequest, Invalid, UnsupportedMediaType
from master.apiserver.patch import JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, apply

POD = kinds.BY_RESOURCE["pods"]
SVC = kinds.BY_RESOURCE["services"]


def pod() -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web", "tier": "front"},
                     "finalizers": ["a.example/x", "a.example/y"], "resourceVersion": "7"},
        "spec": {
            "containers": [
                {"name": "app", "image": "nginx:1", "args": ["-a", "-b"],
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                 "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                {"name": "side", "image": "busybox"},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
            "tolerations": [{"key": "k", "operator": "Exists"}],
        },
    }


def smp(patch, current=None, kind=POD) -> dict:
    return apply(STRATEGIC_MERGE_PATCH, current or pod(), json.dumps(patch).encode(), kind)


# -- patchmeta --------------------------------------------------------------------------

def all_messages():
    seen, todo = {}, [k.message.DESCRIPTOR for k in kinds.KINDS]
    while todo:
        d = todo.pop()
        if d.full_name in seen or not d.full_name.startswith("kubelab."):
            continue
        seen[d.full_name] = d
        todo.extend(f.message_type for f in d.fields if f.message_type is not None)
    return list(seen.values())


def test_every_list_field_of_every_kind_has_patch_metadata():
    missing = []
    for d in all_messages():
        for f in patchmeta.list_fields(d):
            try:
                strategy, key = patchmeta.merge_info(d, f.name)
            except KeyError:
                missing.append(f"{d.name}.{f.name}")
                continue
            assert strategy in (patchmeta.MERGE, patchmeta.REPLACE, patchmeta.MERGE_RETAIN_KEYS)
            if key is not None:  # the merge key is a field of the element
                assert key in f.message_type.fields_by_name, f"{d.name}.{f.name}: {key}"
    assert missing == []


def test_patchmeta_states_kubernetes_struct_tags():
    spec, meta, ctr = v1.PodSpec.DESCRIPTOR, v1.ObjectMeta.DESCRIPTOR, v1.Container.DESCRIPTOR
    assert patchmeta.merge_info(spec, "containers") == ("merge", "name")
    assert patchmeta.merge_info(spec, "volumes") == ("merge,retainKeys", "name")
    assert patchmeta.merge_info(spec, "tolerations") == ("replace", None)
    assert patchmeta.merge_info(ctr, "ports") == ("merge", "containerPort")
    assert patchmeta.merge_info(ctr, "volumeMounts") == ("merge", "mountPath")
    assert patchmeta.merge_info(ctr, "args") == ("replace", None)
    assert patchmeta.merge_info(v1.ServiceSpec.DESCRIPTOR, "ports") == ("merge", "port")
    assert patchmeta.merge_info(meta, "ownerReferences") == ("merge", "uid")
    assert patchmeta.merge_info(meta, "finalizers") == ("merge", None)
    assert patchmeta.merge_info(meta, "labels") == ("merge", None)  # maps merge by key
    assert patchmeta.merge_info(v1.PodStatus.DESCRIPTOR, "conditions") == ("merge", "type")
    # OpenAPI publishes no tags for an atomic list
    assert patchmeta.tags(spec, "tolerations") == (None, None)
    assert patchmeta.tags(spec, "volumes") == ("merge,retainKeys", "name")
    with pytest.raises(KeyError, match="nope"):
        patchmeta.merge_info(spec, "nope")


# -- content types and bad input -----------------------------------------------------------

def test_an_unknown_content_type_is_415_and_bad_json_400():
    with pytest.raises(UnsupportedMediaType, match='unknown format "application/apply-patch\\+yaml"'):
        apply("application/apply-patch+yaml", pod(), b"{}", POD)
    with pytest.raises(BadRequest, match="not valid JSON"):
        apply(MERGE_PATCH, pod(), b"{nope", POD)
    with pytest.raises(BadRequest, match="a JSON object was expected"):
        apply(STRATEGIC_MERGE_PATCH, pod(), b"[]", POD)
    with pytest.raises(BadRequest, match="patched object is a string"):
        apply(MERGE_PATCH, pod(), b'"x"', POD)


def test_a_patch_nested_too_deeply_is_refused():
    deep: dict = {}
    for _ in range(5000):
        deep = {"x": deep}
    with pytest.raises(BadRequest, match="nested too deeply"):
        apply(MERGE_PATCH, pod(), deep, POD)  # parsed already (JSON's own limit is lower)


def test_the_current_object_is_not_changed():
    cur = pod()
    before = copy.deepcopy(cur)
    apply(STRATEGIC_MERGE_PATCH, cur, b'{"spec":{"containers":[{"name":"app","image":"x"}]}}', POD)
    apply(JSON_PATCH, cur, b'[{"op":"remove","path":"/spec/containers/0"}]', POD)
    apply(MERGE_PATCH, cur, b'{"metadata":{"labels":null}}', POD)
    assert cur == before


# -- RFC 7386 ------------------------------------------------------------------------------

def test_merge_patch_merges_objects_deletes_nulls_and_replaces_lists():
    got = apply(MERGE_PATCH, pod(), json.dumps({
        "metadata": {"labels": {"tier": None, "new": "1"}, "annotations": {"a": "b"}},
        "spec": {"containers": [{"name": "only"}], "volumes": None}}).encode(), POD)
    assert got["metadata"]["labels"] == {"app": "web", "new": "1"}
    assert got["metadata"]["annotations"] == {"a": "b"}
    assert got["spec"]["containers"] == [{"name": "only"}]
    assert "volumes" not in got["spec"]
    # a null inside a new object is not kept (RFC 7386's example)
    assert apply(MERGE_PATCH, {}, b'{"a":{"b":null,"c":1}}', POD) == {"a": {"c": 1}}


# -- RFC 6902 ------------------------------------------------------------------------------

def jp(ops, current=None):
    return apply(JSON_PATCH, current if current is not None else pod(), json.dumps(ops).encode(), POD)


def test_json_patch_operations():
    got = jp([
        {"op": "add", "path": "/metadata/labels/app.kubernetes.io~1name", "value": "w"},
        {"op": "add", "path": "/metadata/labels/a~01", "value": "tilde"},  # ~0 then 1: "a~1"
        {"op": "add", "path": "/metadata/annotations", "value": {"x~y": "1"}},
        {"op": "add", "path": "/spec/containers/0/args/-", "value": "-c"},
        {"op": "add", "path": "/spec/containers/0/args/0", "value": "-z"},
        {"op": "replace", "path": "/spec/containers/1/image", "value": "alpine"},
        {"op": "remove", "path": "/metadata/finalizers/0"},
        {"op": "copy", "from": "/spec/containers/1", "path": "/spec/initContainers"},
        {"op": "move", "from": "/metadata/labels/tier", "path": "/metadata/labels/layer"},
        {"op": "test", "path": "/metadata/annotations/x~0y", "value": "1"},
        {"op": "test", "path": "/spec/containers/0/ports/0/containerPort", "value": 80.0},
    ])
    assert got["metadata"]["labels"] == {"app": "web", "app.kubernetes.io/name": "w", "a~1": "tilde",
                                         "layer": "front"}
    assert got["spec"]["containers"][0]["args"] == ["-z", "-a", "-b", "-c"]
    assert got["spec"]["containers"][1]["image"] == "alpine"
    assert got["spec"]["initContainers"] == {"name": "side", "image": "alpine"}
    assert got["metadata"]["finalizers"] == ["a.example/y"]


@pytest.mark.parametrize("op, error, named", [
    ({"op": "remove", "path": "/metadata/nope"}, Invalid, ' (remove "/metadata/nope") does not apply'),
    ({"op": "replace", "path": "/spec/containers/5", "value": {}}, Invalid, " (replace"),
    ({"op": "add", "path": "/spec/containers/3", "value": {}}, Invalid, " (add"),
    ({"op": "add", "path": "/spec/nope/x", "value": 1}, Invalid, " (add"),
    ({"op": "test", "path": "/metadata/name", "value": "other"}, Invalid, " (test"),
    ({"op": "test", "path": "/spec/containers/0/ports/0/containerPort", "value": True}, Invalid, " (test"),
    ({"op": "move", "from": "/spec", "path": "/spec/x"}, Invalid,
     ' (move "/spec/x") does not apply: a value cannot be moved into one of its own children'),
    ({"op": "test", "path": "/metadata/generation", "value": True}, Invalid, ' (test "/metadata/generation")'),
    ({"op": "copy", "from": "/nope", "path": "/x"}, Invalid, " (copy"),
    ({"op": "remove", "path": "/spec/containers/01"}, Invalid, " (remove"),
    ({"op": "frobnicate", "path": "/x"}, BadRequest, ': unknown op "frobnicate"'),
    ({"op": "add", "path": "/x"}, BadRequest, ' (add "/x"): "value" is missing'),
    ({"op": "add", "value": 1}, BadRequest, ' (add): "path" is missing'),
    ({"op": "move", "path": "/x"}, BadRequest, ' (move "/x"): "from" is missing'),
    ({"op": "add", "path": "x", "value": 1}, BadRequest, ' (add "x"): JSON pointer "x" must be empty'),
    ("add", BadRequest, ": an object was expected"),
])
def test_json_patch_errors_name_the_operation(op, error, named):
    with pytest.raises(error) as e:
        jp([{"op": "add", "path": "/metadata/generation", "value": 1}, op])
    assert e.value.message.startswith("json patch operation 1" + named), e.value.message
    with pytest.raises(BadRequest, match="a list of operations was expected"):
        jp({"op": "add"})


def test_a_failed_json_patch_applies_nothing():
    cur = pod()
    with pytest.raises(Invalid):
        jp([{"op": "add", "path": "/metadata/labels/x", "value": "1"},
            {"op": "test", "path": "/metadata/name", "value": "other"}], cur)
    assert "x" not in cur["metadata"]["labels"]
    assert jp([{"op": "replace", "path": "", "value": {"kind": "Pod"}}]) == {"kind": "Pod"}


# -- strategic merge patch -----------------------------------------------------------------

def names(items):
    return [i["name"] for i in items]


def test_kubectl_label_and_annotate_patches():
    got = smp({"metadata": {"labels": {"tier": None, "env": "prod"}, "annotations": {"note": "x"}}})
    assert got["metadata"]["labels"] == {"app": "web", "env": "prod"}
    assert got["metadata"]["annotations"] == {"note": "x"}
    assert got["spec"] == pod()["spec"]


def test_merge_lists_merge_by_key_and_atomic_lists_are_replaced():
    got = smp({"spec": {"containers": [{"name": "app", "image": "nginx:2", "args": ["-x"],
                                        "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]}],
                        "tolerations": [{"key": "other", "operator": "Exists"}]}})
    app = got["spec"]["containers"][0]
    assert names(got["spec"]["containers"]) == ["app", "side"]
    assert app["image"] == "nginx:2" and app["args"] == ["-x"]  # args: atomic
    assert app["ports"] == [{"containerPort": 80, "protocol": "TCP"}]  # untouched fields stay
    # env merged by name: B changed in place, C new after B (the patch's order, placed where
    # the live order puts B)
    assert app["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}]
    assert got["spec"]["tolerations"] == [{"key": "other", "operator": "Exists"}]
    # a new container goes in front of the live ones, which keep their order
    got = smp({"spec": {"containers": [{"name": "new", "image": "x"}]}})
    assert names(got["spec"]["containers"]) == ["new", "app", "side"]


def test_service_ports_merge_by_port():
    svc = {"spec": {"ports": [{"port": 80, "targetPort": 8080, "name": "http"}, {"port": 443, "name": "https"}]}}
    got = smp({"spec": {"ports": [{"port": 443, "targetPort": 8443}]}}, svc, SVC)
    assert got["spec"]["ports"] == [{"port": 80, "targetPort": 8080, "name": "http"},
                                    {"port": 443, "name": "https", "targetPort": 8443}]


def test_kubectl_apply_three_way_patch_with_set_element_order_and_delete():
    # what kubectl apply sends after a manifest dropped env B and container "side" and
    # changed the image of "app"
    got = smp({"spec": {
        "$setElementOrder/containers": [{"name": "app"}],
        "containers": [{"name": "app", "image": "nginx:3", "$setElementOrder/env": [{"name": "A"}],
                        "env": [{"$patch": "delete", "name": "B"}]},
                       {"$patch": "delete", "name": "side"}]}})
    assert names(got["spec"]["containers"]) == ["app"]
    assert got["spec"]["containers"][0]["env"] == [{"name": "A", "value": "1"}]
    assert got["spec"]["containers"][0]["image"] == "nginx:3"
    # $setElementOrder reorders the merged list; items it does not name keep their live place
    got = smp({"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
                        "containers": [{"name": "side", "image": "alpine"}]}})
    assert names(got["spec"]["containers"]) == ["side", "app"]
    assert got["spec"]["containers"][0]["image"] == "alpine"
    got = smp({"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "app"}]}})
    assert names(got["spec"]["containers"]) == ["side", "app"]


def test_primitive_merge_lists_are_sets_with_delete_from_primitive_list():
    got = smp({"metadata": {"finalizers": ["a.example/z", "a.example/x"]}})
    assert got["metadata"]["finalizers"] == ["a.example/z", "a.example/x", "a.example/y"]  # deduplicated
    got = smp({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a.example/x", "never"]}})
    assert got["metadata"]["finalizers"] == ["a.example/y"]
    got = smp({"metadata": {"$setElementOrder/finalizers": ["a.example/y", "a.example/x"]}})
    assert got["metadata"]["finalizers"] == ["a.example/y", "a.example/x"]
    # nothing to delete from a list that is not there
    got = smp({"spec": {"containers": [{"name": "side", "$deleteFromPrimitiveList/args": ["-q"]}]}})
    assert "args" not in got["spec"]["containers"][1]
    with pytest.raises(BadRequest, match="invalid patch format of primitive list"):
        smp({"metadata": {"$deleteFromPrimitiveList/finalizers": "x"}})


def test_patch_replace_and_delete_directives():
    got = smp({"spec": {"containers": [{"name": "only", "image": "x"}, {"$patch": "replace"}]}})
    assert got["spec"]["containers"] == [{"name": "only", "image": "x"}]
    got = smp({"metadata": {"labels": {"$patch": "replace", "just": "this"}}})
    assert got["metadata"]["labels"] == {"just": "this"}
    got = smp({"metadata": {"labels": {"$patch": "delete"}}})
    assert got["metadata"]["labels"] == {}
    with pytest.raises(BadRequest, match="unknown patch type: sideways"):
        smp({"metadata": {"labels": {"$patch": "sideways"}}})
    with pytest.raises(BadRequest, match="merging lists cannot yet be specified"):
        smp({"spec": {"containers": [{"$patch": "merge"}]}})
    with pytest.raises(BadRequest, match="does not contain declared merge key: name"):
        smp({"spec": {"containers": [{"$patch": "delete"}]}})
    with pytest.raises(BadRequest, match="does not contain declared merge key: name"):
        smp({"spec": {"containers": [{"image": "no-name"}]}})


def test_retain_keys_clears_the_other_keys_of_a_volume():
    got = smp({"spec": {"volumes": [{"name": "data", "$retainKeys": ["name", "hostPath"],
                                     "hostPath": {"path": "/srv"}}]}})
    assert got["spec"]["volumes"] == [{"name": "data", "hostPath": {"path": "/srv"}}]
    with pytest.raises(BadRequest, match="invalid patch format of retainKeys"):
        smp({"spec": {"volumes": [{"name": "data", "$retainKeys": ["name"], "hostPath": {"path": "/srv"}}]}})


def test_null_deletes_and_new_fields_are_taken_without_their_directives():
    got = smp({"spec": {"volumes": None, "initContainers": [{"name": "init", "image": "x",
                                                             "env": [{"$patch": "delete", "name": "Q"}]}]}})
    assert "volumes" not in got["spec"]
    assert got["spec"]["initContainers"] == [{"name": "init", "image": "x", "env": []}]
    got = smp({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert got["status"] == {"conditions": [{"type": "Ready", "status": "True"}]}
    # a list of a field the kind does not have is replaced (the decoder names the field later)
    assert smp({"extra": [3]}, {"extra": [1, 2]})["extra"] == [3]
    with pytest.raises(BadRequest, match="list element types are not identical"):
        smp({"metadata": {"finalizers": [{"x": 1}]}})


# -- any input: an ApiError or a JSON object, never another exception ------------------------

_leaf = st.none() | st.booleans() | st.integers(-2, 2) | st.sampled_from(["app", "side", "delete", "replace",
                                                                          "merge", "a.example/x"])
_value = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["name", "image", "value", "x"]), inner, max_size=3), max_leaves=6)
_element = st.dictionaries(st.sampled_from(["name", "image", "$patch", "env", "args", "$setElementOrder/env",
                                            "$retainKeys", "emptyDir", "hostPath"]), _value, max_size=4)
_list = st.lists(_element | _leaf, max_size=4)
_spec = st.dictionaries(st.sampled_from(["containers", "$setElementOrder/containers", "volumes", "tolerations",
                                         "$retainKeys", "$patch", "initContainers"]), _list | _leaf, max_size=3)
_meta = st.dictionaries(st.sampled_from(["labels", "finalizers", "$deleteFromPrimitiveList/finalizers",
                                         "$setElementOrder/finalizers", "$patch", "ownerReferences"]),
                        _list | _value, max_size=3)
_smp = st.fixed_dictionaries({}, optional={"spec": _spec | _leaf, "metadata": _meta, "x": _value})
_paths = st.sampled_from(["", "/", "/spec/containers/0", "/spec/containers/-", "/spec/containers/9",
                          "/spec/containers/01", "/metadata/labels/app", "/metadata/finalizers/1",
                          "/metadata/finalizers/-", "/x/y", "/spec/containers/0/env/1/value", "/spec",
                          "/metadata/labels/a~1b", "/spec/containers/0/args/-"])
_op = st.fixed_dictionaries({"op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test", "x"])},
                            optional={"path": _paths, "from": _paths, "value": _value})


@settings(max_examples=120, deadline=None)
@given(st.one_of(st.tuples(st.just(STRATEGIC_MERGE_PATCH), _smp), st.tuples(st.just(MERGE_PATCH), _smp),
                 st.tuples(st.just(JSON_PATCH), st.lists(_op, max_size=4))))
def test_any_patch_is_applied_or_refused_never_crashes(case):
    ctype, patch = case
    try:
        got = apply(ctype, pod(), json.dumps(patch).encode(), POD)
    except (BadRequest, Invalid):
        return
    assert isinstance(got, dict)
