"""Authorization: may this user do this verb on this resource? The API service calls
`authorize` once for every request, whatever the verb (watch, pods/log, pods/exec,
pods/binding and the status subresource included), after authentication (auth.py).

The rules, fixed in code (there is no RBAC API yet):
- group system:masters (the admin): everything.
- system:kube-scheduler: reads (but not Secrets), pods/binding, pods/status (nominated node,
  PodScheduled), pod deletion (preemption), events, and Leases in kube-system (leader election).
- system:kube-controller-manager: reads, and writes on the kinds its controllers own:
  namespaces, nodes (+status), pods (delete, status: eviction and namespace cleanup), events,
  Leases, Secrets (tokencleaner), CertificateSigningRequests (+status: approval and signing),
  Endpoints and EndpointSlices (the endpoints controllers); Services only deleted (namespace
  cleanup), never written: their spec is the user's.
- a node, system:node:NAME in system:nodes (Kubernetes' Node authorizer, simplified): reads
  except Secrets (Services, Endpoints and EndpointSlices included: kube-proxy and the cluster
  DNS run with the node's credentials); its own Node (+status) and its own Lease in kube-node-lease; pods bound to it
  (create a mirror pod, update, delete, status); events; creating signing requests.
- a bootstrap token (system:bootstrappers): reading cluster-info, and creating and reading
  CertificateSigningRequests (kubeadm's system:node-bootstrapper role: it must see its own
  request get a certificate); getting one Node, and one Lease in kube-node-lease (kubeadm's
  kubeadm:get-nodes role: join refuses a name that a live node holds before it asks for a
  certificate in that name).
- anyone, even unauthenticated: `get configmaps/cluster-info` in kube-public (discovery).
Everything else is refused: Forbidden in Kubernetes' words, or Unauthorized for a caller
with no identity at all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from kubelab.api import kinds
from kubelab.errors import Forbidden, Unauthorized

from .auth import UserInfo

READ = frozenset({"get", "list", "watch"})
WRITE = frozenset({"create", "update", "delete"})
MASTERS = "system:masters"
NODES = "system:nodes"
NODE_PREFIX = "system:node:"
SCHEDULER = "system:kube-scheduler"
CONTROLLER_MANAGER = "system:kube-controller-manager"
BOOTSTRAPPERS = "system:bootstrappers"
CSRS = "certificatesigningrequests"


@dataclass
class Attributes:
    user: UserInfo
    verb: str                 # get list watch create update delete
    resource: str             # plural: pods, nodes, ...
    namespace: str = ""
    name: str = ""
    subresource: str = ""     # status, binding, log, exec
    obj: object = None        # the object of a create or update, as sent

    def describe(self) -> str:
        res = self.resource + (f"/{self.subresource}" if self.subresource else "")
        kind = kinds.BY_RESOURCE.get(self.resource)
        group = kind.api_version.rpartition("/")[0] if kind else ""
        qual = f"{self.resource}.{group}" if group else self.resource
        what = f'{qual} "{self.name}"' if self.name else qual
        where = (f'in the namespace "{self.namespace}"' if self.namespace and (kind is None or kind.namespaced)
                 else "at the cluster scope")
        in_group = f' in API group "{group}"' if group else ""
        return (f'{what} is forbidden: User "{self.user.name}" cannot {self.verb} resource "{res}"'
                f"{in_group} {where}")


# fetches the stored object (or None) for rules that depend on it (a pod's node)
Fetch = Callable[[], Awaitable[object]]


async def authorize(a: Attributes, fetch: Fetch) -> None:
    """Raise Forbidden (or Unauthorized) unless `a` is allowed."""
    if await allowed(a, fetch):
        return
    if a.user.anonymous:
        raise Unauthorized("Unauthorized")
    raise Forbidden(a.describe())


async def allowed(a: Attributes, fetch: Fetch) -> bool:
    u, groups = a.user, set(a.user.groups)
    if MASTERS in groups:
        return True
    if a.verb == "get" and a.resource == "configmaps" and a.namespace == "kube-public" and a.name == "cluster-info":
        return True
    if u.anonymous:
        return False
    reads = a.verb in READ and not a.subresource
    if u.name == SCHEDULER:
        return ((reads and a.resource != "secrets")
                or (a.resource == "pods" and (a.subresource in ("binding", "status") or a.verb == "delete"))
                or (a.resource == "events" and a.verb in WRITE)
                or (a.resource == "leases" and a.namespace == "kube-system"))
    if u.name == CONTROLLER_MANAGER:
        owned = {"namespaces", "nodes", "events", "leases", "secrets", "configmaps", CSRS, "endpoints",
                 "endpointslices"}
        return (reads or (a.resource in owned and a.subresource in ("", "status"))
                or (a.resource in ("pods", "services") and (a.verb == "delete" or a.subresource == "status")))
    if NODES in groups and u.name.startswith(NODE_PREFIX):
        return await _node_allowed(a, u.name[len(NODE_PREFIX):], fetch)
    if BOOTSTRAPPERS in groups:
        if a.verb == "get" and not a.subresource and (
                a.resource == "nodes" or (a.resource == "leases" and a.namespace == "kube-node-lease")):
            return True
        return a.resource == CSRS and a.subresource == "" and (a.verb in READ or a.verb == "create")
    return False


async def _node_allowed(a: Attributes, node: str, fetch: Fetch) -> bool:
    if a.verb in READ and not a.subresource:
        return a.resource != "secrets"  # a node sees no Secrets: none are mounted into pods yet
    if a.resource == "nodes":
        return a.name == node and a.subresource in ("", "status")
    if a.resource == "leases":
        return a.namespace == "kube-node-lease" and a.name == node and a.verb in WRITE
    if a.resource == "events":
        return a.verb in WRITE
    if a.resource == CSRS:
        return a.verb == "create"
    if a.resource == "pods" and a.subresource in ("", "status"):
        if a.verb == "create":  # a mirror pod of a static pod, bound to this node
            return getattr(getattr(a.obj, "spec", None), "nodeName", "") == node
        stored = await fetch()
        # a pod that does not exist (any more) gives nothing away: the store answers NotFound
        return stored is None or stored.spec.nodeName == node
    return False
