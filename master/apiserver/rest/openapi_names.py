"""Kubernetes' names for kubelab's API messages (objects.proto is one protobuf package; Kubernetes
spreads the same types over API groups): the definition names OpenAPI publishes
(master/apiserver/rest/openapi_schema.py) and openapi_gen.py looks descriptions up by.
"""
from __future__ import annotations

from google.protobuf.descriptor import Descriptor

from kubelab.api import kinds
from kubelab.api.v1 import objects_pb2

META = "io.k8s.apimachinery.pkg.apis.meta.v1."

# messages outside core/v1 (objects.proto is one package; Kubernetes spreads them over groups)
_PACKAGE = {
    "ObjectMeta": META, "OwnerReference": META, "Condition": META,
    "Lease": "io.k8s.api.coordination.v1.", "LeaseSpec": "io.k8s.api.coordination.v1.",
    "CertificateSigningRequest": "io.k8s.api.certificates.v1.",
    "CertificateSigningRequestSpec": "io.k8s.api.certificates.v1.",
    "CertificateSigningRequestStatus": "io.k8s.api.certificates.v1.",
    "CertificateSigningRequestCondition": "io.k8s.api.certificates.v1.",
    "ExtraValue": "io.k8s.api.certificates.v1.",
    "EndpointSlice": "io.k8s.api.discovery.v1.", "Endpoint": "io.k8s.api.discovery.v1.",
    "EndpointConditions": "io.k8s.api.discovery.v1.", "EndpointSlicePort": "io.k8s.api.discovery.v1.",
}
# one proto package cannot hold two EndpointPort messages: discovery/v1's is renamed here
_RENAMED = {"EndpointSlicePort": "EndpointPort"}


def definition_name(desc: Descriptor) -> str:
    """Kubernetes' definition name of one of our messages: io.k8s.api.core.v1.Pod."""
    return _PACKAGE.get(desc.name, "io.k8s.api.core.v1.") + _RENAMED.get(desc.name, desc.name)


def kind_definition(kind: kinds.Kind) -> str:
    """The definition name of a kind; a JSON-only kind (no message) is named by its group."""
    if kind.message is not None:
        return definition_name(kind.message.DESCRIPTOR)
    group, _, version = kind.api_version.rpartition("/")
    return f"io.k8s.api.{group.split('.')[0] or 'core'}.{version}.{kind.kind}"


def list_name(kind: kinds.Kind) -> str:
    return kind_definition(kind) + "List"


def gvk(kind: kinds.Kind, name: str | None = None) -> dict:
    group, _, version = kind.api_version.rpartition("/")
    return {"group": group, "kind": name or kind.kind, "version": version}


def all_messages() -> list[Descriptor]:
    """Every message of objects.proto (for the description generator and the tests)."""
    return list(objects_pb2.DESCRIPTOR.message_types_by_name.values())
