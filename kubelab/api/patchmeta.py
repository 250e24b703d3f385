"""Strategic-merge-patch metadata of the kinds' list fields: how `kubectl apply`, `kubectl
patch --type strategic` and the API server's PATCH (master/apiserver/patch.py) merge a list,
and what OpenAPI (master/apiserver/rest/openapi.py) publishes as
x-kubernetes-patch-strategy / x-kubernetes-patch-merge-key.

The facts are Kubernetes' own: the `patchStrategy` and `patchMergeKey` struct tags of
k8s.io/api's Go types. A list without a tag is atomic: a patch replaces it whole, which this
table reports as strategy "replace" with no merge key. Maps (labels, data, ...) always merge
key by key. Every repeated field of every kind's message is listed here; tests check that no
new one is added without its row, because the default for an unknown field would silently be
"replace" and `kubectl apply` would then clobber what it meant to merge.

Interface: merge_info(message_descriptor, field_name) -> (strategy, merge_key)
  strategy: "merge" (lists of objects merged by merge_key; lists of primitives merged as sets),
            "merge,retainKeys" (merge, and $retainKeys is honoured inside each element),
            "replace" (atomic: the patch's list replaces the current one);
  merge_key: the element field naming an element, or None.
  KeyError for a field the message does not have.
"""
from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

MERGE = "merge"
REPLACE = "replace"
MERGE_RETAIN_KEYS = "merge,retainKeys"

# (message name in objects.proto, field) -> (patchStrategy, patchMergeKey), as tagged in
# k8s.io/api (core/v1, coordination/v1, certificates/v1, discovery/v1) and apimachinery's
# metav1. Lists of primitives tagged `patchStrategy:"merge"` are sets (finalizers, podCIDRs).
_LISTS: dict[tuple[str, str], tuple[str, str | None]] = {
    ("ObjectMeta", "ownerReferences"): (MERGE, "uid"),
    ("ObjectMeta", "finalizers"): (MERGE, None),
    ("NamespaceSpec", "finalizers"): (REPLACE, None),
    ("NamespaceStatus", "conditions"): (MERGE, "type"),
    ("NodeSpec", "podCIDRs"): (MERGE, None),
    ("NodeSpec", "taints"): (REPLACE, None),
    ("NodeStatus", "conditions"): (MERGE, "type"),
    ("NodeStatus", "addresses"): (MERGE, "type"),
    ("ExecAction", "command"): (REPLACE, None),
    ("HTTPGetAction", "httpHeaders"): (REPLACE, None),
    ("Container", "command"): (REPLACE, None),
    ("Container", "args"): (REPLACE, None),
    ("Container", "ports"): (MERGE, "containerPort"),
    ("Container", "env"): (MERGE, "name"),
    ("Container", "volumeMounts"): (MERGE, "mountPath"),
    ("PodSpec", "volumes"): (MERGE_RETAIN_KEYS, "name"),
    ("PodSpec", "initContainers"): (MERGE, "name"),
    ("PodSpec", "containers"): (MERGE, "name"),
    ("PodSpec", "tolerations"): (REPLACE, None),
    ("PodDNSConfig", "nameservers"): (REPLACE, None),
    ("PodDNSConfig", "searches"): (REPLACE, None),
    ("PodDNSConfig", "options"): (REPLACE, None),
    ("PodStatus", "conditions"): (MERGE, "type"),
    ("PodStatus", "podIPs"): (MERGE, "ip"),
    ("PodStatus", "initContainerStatuses"): (REPLACE, None),
    ("PodStatus", "containerStatuses"): (REPLACE, None),
    ("ExtraValue", "items"): (REPLACE, None),
    ("CertificateSigningRequestSpec", "usages"): (REPLACE, None),
    ("CertificateSigningRequestSpec", "groups"): (REPLACE, None),
    # listType=map by type, but no patchStrategy tag: strategic merge replaces it
    ("CertificateSigningRequestStatus", "conditions"): (REPLACE, None),
    ("ServiceSpec", "ports"): (MERGE, "port"),
    ("ServiceSpec", "clusterIPs"): (REPLACE, None),
    ("ServiceSpec", "ipFamilies"): (REPLACE, None),
    ("ServiceSpec", "externalIPs"): (REPLACE, None),
    ("LoadBalancerStatus", "ingress"): (REPLACE, None),
    ("ServiceStatus", "conditions"): (MERGE, "type"),
    ("EndpointSubset", "addresses"): (REPLACE, None),
    ("EndpointSubset", "notReadyAddresses"): (REPLACE, None),
    ("EndpointSubset", "ports"): (REPLACE, None),
    ("Endpoints", "subsets"): (REPLACE, None),
    ("Endpoint", "addresses"): (REPLACE, None),
    ("EndpointSlice", "endpoints"): (REPLACE, None),
    ("EndpointSlice", "ports"): (REPLACE, None),
}


def _is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def _is_repeated(f: FieldDescriptor) -> bool:
    return f.is_repeated


def merge_info(desc: Descriptor, field_name: str) -> tuple[str, str | None]:
    """How a strategic merge patch merges `field_name` of messages of type `desc`."""
    f = desc.fields_by_name.get(field_name)
    if f is None:
        raise KeyError(f"{desc.name} has no field {field_name!r}")
    if _is_map(f):
        return MERGE, None
    if not _is_repeated(f):
        # a nested object merges field by field; a scalar is replaced
        return (MERGE if f.message_type is not None else REPLACE), None
    return _LISTS[(desc.name, field_name)]


def list_fields(desc: Descriptor):
    """The repeated, non-map fields of `desc` (the ones _LISTS must name): for the tests."""
    return [f for f in desc.fields if _is_repeated(f) and not _is_map(f)]


def tags(desc: Descriptor, field_name: str) -> tuple[str | None, str | None]:
    """(patchStrategy, patchMergeKey) as the Go tags would publish them in OpenAPI: None for
    an atomic list or a field without tags."""
    f = desc.fields_by_name.get(field_name)
    if f is None or not _is_repeated(f) or _is_map(f):
        return None, None
    strategy, key = _LISTS[(desc.name, field_name)]
    return (None, None) if strategy == REPLACE else (strategy, key)
