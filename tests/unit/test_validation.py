import pytest
from hypothesis import given, settings, strategies as st

from kubelab.api import kinds
from kubelab.api.v1 import objects_pb2 as v1
from kubelab.errors import Invalid
from master.apiserver.registry import STRATEGIES


def pod(name="web", image="busybox", **spec):
    p = v1.Pod()
    p.metadata.name = name
    p.metadata.namespace = "default"
    p.spec.containers.add(name="c", image=image)
    for k, v in spec.items():
        setattr(p.spec, k, v)
    return p


def create(obj):
    s = STRATEGIES[kinds.kind_of(obj).resource]
    s.prepare_create(obj)
    s.validate(obj)
    return obj


def test_missing_image_names_the_field():
    with pytest.raises(Invalid) as e:
        create(pod(image=""))
    assert str(e.value) == 'pods "web" is invalid: spec.containers[0].image: Required value'


def test_bad_namespace_name():
    ns = v1.Namespace()
    ns.metadata.name = "Bad_Name"
    with pytest.raises(Invalid, match=r'namespaces "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name"'):
        create(ns)


def test_pod_defaults():
    p = create(pod())
    assert p.spec.restartPolicy == "Always"
    assert p.spec.terminationGracePeriodSeconds == 30
    assert p.spec.containers[0].imagePullPolicy == "Always"
    assert p.status.phase == "Pending"
    assert {t.key for t in p.spec.tolerations} == {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}
    assert p.metadata.uid and p.metadata.creationTimestamp


def test_several_errors_in_one_message():
    p = pod(image="")
    p.spec.restartPolicy = "Sometimes"
    p.spec.containers[0].resources.requests["cpu"] = "lots"
    with pytest.raises(Invalid) as e:
        create(p)
    msg = str(e.value)
    assert "spec.containers[0].image: Required value" in msg
    assert 'spec.restartPolicy: Unsupported value: "Sometimes"' in msg
    assert "spec.containers[0].resources.requests[cpu]" in msg


def test_volume_mount_must_name_a_volume():
    p = pod()
    p.spec.containers[0].volumeMounts.add(name="logs", mountPath="/var/log")
    with pytest.raises(Invalid, match=r'volumeMounts\[0\].name: Not found: "logs"'):
        create(p)


def test_pod_spec_is_immutable_but_image():
    old = create(pod())
    new = v1.Pod()
    new.CopyFrom(old)
    new.spec.containers[0].image = "busybox:2"
    STRATEGIES["pods"].validate(new, old)
    new.spec.restartPolicy = "Never"
    with pytest.raises(Invalid, match="pod updates may not change fields"):
        STRATEGIES["pods"].validate(new, old)


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=70), image=st.text(max_size=20),
       port=st.integers(-5, 70000), cpu=st.text(max_size=6))
def test_validation_never_crashes(name, image, port, cpu):
    """Any input ends in a valid object or an Invalid error, never another exception."""
    p = pod(name=name, image=image)
    p.spec.containers[0].ports.add(containerPort=port)
    p.spec.containers[0].resources.requests["cpu"] = cpu
    try:
        create(p)
    except Invalid as e:
        assert str(e).startswith(f'pods "{name}" is invalid: ')
