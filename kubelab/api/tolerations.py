"""Whether a toleration tolerates a taint: Kubernetes' matching rules, shared by the scheduler's
TaintToleration filter and the node lifecycle controller's NoExecute evictions."""
from __future__ import annotations

from kubelab.api.v1 import objects_pb2 as v1


def tolerates(t: v1.Toleration, taint: v1.Taint) -> bool:
    if t.effect and t.effect != taint.effect:
        return False
    if t.operator == "Exists":
        return not t.key or t.key == taint.key
    return t.key == taint.key and t.value == taint.value
