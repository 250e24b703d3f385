from hypothesis import given, strategies as st

from kubelab import meta, quantity
from kubelab.api.v1 import objects_pb2 as v1


@given(rv=st.integers(min_value=1, max_value=2**62), name=st.text(max_size=40),
       labels=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4))
def test_rv_suffix_merges_into_any_stored_object(rv, name, labels):
    pod = v1.Pod()
    pod.metadata.name = name
    pod.metadata.labels.update(labels)
    pod.spec.nodeName = "n"
    got = v1.Pod.FromString(pod.SerializeToString() + meta.rv_suffix(rv))
    pod.metadata.resourceVersion = str(rv)
    assert got == pod


def test_quantities():
    assert quantity.milli("100m") == 100
    assert quantity.milli("2") == 2000
    assert quantity.milli("0.5") == 500
    assert quantity.value("64Mi") == 64 * 2**20
    assert quantity.value("1G") == 10**9
    assert quantity.value("129e6") == 129 * 10**6
    assert quantity.format_milli(1500) == "1500m"
    assert quantity.format_bytes(2**30) == "1Gi"


def test_time_roundtrip():
    t = meta.now().replace(microsecond=0)
    assert meta.parse_time(meta.rfc3339(t)) == t
    assert meta.parse_time("garbage") is None
