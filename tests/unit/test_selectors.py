import pytest

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import BadRequest
from kubelab.selectors import FieldSelector, LabelSelector, field_set


@pytest.mark.parametrize("sel,labels,want", [
    ("", {}, True),
    ("app=web", {"app": "web"}, True),
    ("app==web", {"app": "db"}, False),
    ("app!=web", {}, True),
    ("app!=web", {"app": "web"}, False),
    ("app in (web, db)", {"app": "db"}, True),
    ("app notin (web,db)", {"app": "db"}, False),
    ("app notin (web)", {}, True),
    ("app", {"app": ""}, True),
    ("!app", {"app": "x"}, False),
    ("app=web,tier in (fe),!legacy", {"app": "web", "tier": "fe"}, True),
    ("example.com/team=a", {"example.com/team": "a"}, True),
])
def test_label_selector(sel, labels, want):
    assert LabelSelector.parse(sel).matches(labels) is want


@pytest.mark.parametrize("bad", ["app=(", "=x", "a b c"])
def test_label_selector_errors(bad):
    with pytest.raises(BadRequest):
        LabelSelector.parse(bad)


def test_field_selector_on_pod():
    pod = v1.Pod()
    pod.metadata.name, pod.metadata.namespace = "web", "dev"
    pod.spec.nodeName = "n1"
    pod.status.phase = "Running"
    fields = field_set(pod, ("metadata.name", "spec.nodeName", "status.phase"))
    assert FieldSelector.parse("spec.nodeName=n1,status.phase!=Failed").matches(fields)
    assert not FieldSelector.parse("spec.nodeName=").matches(fields)


def test_field_selector_unknown_field():
    with pytest.raises(BadRequest, match="field label not supported: spec.foo"):
        FieldSelector.parse("spec.foo=x", ("metadata.name",), "Pod")
