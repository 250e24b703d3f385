"""The table of API kinds, shared by the API server, the client library and the CLI.

A kind is one row here plus one message in protos/kubelab/api/v1/objects.proto: the
server's registry and the client's typed accessors are both built from this table, so a
new kind needs no new service and no new client code.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import Message

from kubelab.api.v1 import objects_pb2 as v1


@dataclass(frozen=True)
class Kind:
    kind: str  # "Pod"
    resource: str  # "pods" (plural, lower case: the etcd prefix and the API's name)
    message: type[Message]
    namespaced: bool
    api_version: str = "v1"
    short_names: tuple[str, ...] = ()
    has_status: bool = True  # UpdateStatus is its own verb (the status subresource)
    stored: bool = True  # Binding is a verb on a pod, never stored
    field_selectors: tuple[str, ...] = field(default=("metadata.name", "metadata.namespace"))

    @property
    def type_url(self) -> str:
        return "type.googleapis.com/" + self.message.DESCRIPTOR.full_name

    @property
    def singular(self) -> str:
        return self.kind.lower()


KINDS: tuple[Kind, ...] = (
    Kind("Namespace", "namespaces", v1.Namespace, False, short_names=("ns",),
         field_selectors=("metadata.name", "status.phase")),
    Kind("Node", "nodes", v1.Node, False, short_names=("no",),
         field_selectors=("metadata.name", "spec.unschedulable")),
    Kind("Pod", "pods", v1.Pod, True, short_names=("po",),
         field_selectors=("metadata.name", "metadata.namespace", "spec.nodeName", "status.phase",
                          "status.podIP")),
    Kind("Binding", "bindings", v1.Binding, True, has_status=False, stored=False),
    Kind("Lease", "leases", v1.Lease, True, api_version="coordination.k8s.io/v1", has_status=False),
    Kind("Event", "events", v1.Event, True, short_names=("ev",), has_status=False,
         field_selectors=("metadata.name", "metadata.namespace", "involvedObject.kind",
                          "involvedObject.name", "involvedObject.namespace", "involvedObject.uid",
                          "reason", "type")),
    Kind("Secret", "secrets", v1.Secret, True, has_status=False,
         field_selectors=("metadata.name", "metadata.namespace", "type")),
    Kind("ConfigMap", "configmaps", v1.ConfigMap, True, short_names=("cm",), has_status=False),
    Kind("CertificateSigningRequest", "certificatesigningrequests", v1.CertificateSigningRequest, False,
         api_version="certificates.k8s.io/v1", short_names=("csr",),
         field_selectors=("metadata.name", "spec.signerName")),
    Kind("Service", "services", v1.Service, True, short_names=("svc",),
         field_selectors=("metadata.name", "metadata.namespace", "spec.clusterIP", "spec.type")),
    Kind("Endpoints", "endpoints", v1.Endpoints, True, short_names=("ep",), has_status=False),
    # labelled kubernetes.io/service-name=<service>: a service's slices are found by that label
    Kind("EndpointSlice", "endpointslices", v1.EndpointSlice, True, api_version="discovery.k8s.io/v1",
         has_status=False),
)

BY_RESOURCE: dict[str, Kind] = {k.resource: k for k in KINDS}
BY_TYPE_URL: dict[str, Kind] = {k.type_url: k for k in KINDS}
BY_MESSAGE: dict[type, Kind] = {k.message: k for k in KINDS}


def lookup(name: str) -> Kind:
    """Resolve what a user types (pod, pods, po, Pod) to its kind; KeyError if unknown."""
    n = name.lower()
    for k in KINDS:
        if n in (k.resource, k.singular, *k.short_names):
            return k
    raise KeyError(name)


def kind_of(obj: Message) -> Kind:
    return BY_MESSAGE[type(obj)]
