"""The endpoint controller of the controller manager (Kubernetes' `endpoint` and
`endpointslice` controllers in one, sharing their informers): for every Service with a
selector it keeps the Endpoints object of the same name and the Service's EndpointSlices
(labelled kubernetes.io/service-name, managed-by endpointslice-controller.k8s.io) equal to
the pods the selector matches in its namespace. kube-proxy and the DNS read the slices;
`kubelab get endpoints` shows the Endpoints.

Level-triggered: informers on Services, Pods, Endpoints and our EndpointSlices only enqueue
the service keys a change concerns; `reconcile(ns/name)` computes the desired objects
(endpoints_desired.py) and writes only what differs from what the informers hold. Services
without a selector are left alone (their Endpoints are written by hand, as the API server
does for `kubernetes`); when a Service is deleted, its Endpoints and slices are deleted too.
"""
from __future__ import annotations

import logging

from kubelab.api.v1 import objects_pb2 as v1
from kubelab.client.client import Client
from kubelab.client.controller import Controller
from kubelab.client.informer import Informer
from kubelab.errors import AlreadyExists, NotFound

from . import endpoints_desired as desired

log = logging.getLogger("endpoint-controller")


class EndpointsController(Controller):
    name = "endpoint"
    workers = 4

    def __init__(self, client: Client):
        super().__init__()
        self.client = client
        self.writes = 0  # creates, updates and deletes sent: a reconcile that changes nothing sends none
        self.services: Informer[v1.Service] = Informer(client.resource("services"))
        self.pods: Informer[v1.Pod] = Informer(client.pods())
        self.endpoints: Informer[v1.Endpoints] = Informer(client.resource("endpoints"))
        self.slices: Informer[v1.EndpointSlice] = Informer(
            client.resource("endpointslices"), label_selector=f"{desired.MANAGED_BY_LABEL}={desired.MANAGED_BY}")
        # namespace -> key -> object, kept by the handlers: a pod change looks only at the
        # services of its namespace, a reconcile only at the pods of its namespace
        self._svc_by_ns: dict[str, dict[str, v1.Service]] = {}
        self._pods_by_ns: dict[str, dict[str, v1.Pod]] = {}
        self._slices_by_svc: dict[tuple[str, str], dict[str, v1.EndpointSlice]] = {}
        self.services.add_handler(self._service_changed, lambda old, new: self._service_changed(new),
                                  self._service_gone)
        self.pods.add_handler(lambda p: self._pod_changed(None, p), self._pod_changed,
                              lambda p: self._pod_changed(p, None))
        self.endpoints.add_handler(self._enqueue_same_name, lambda old, new: self._enqueue_same_name(new),
                                   self._enqueue_same_name)
        self.slices.add_handler(lambda s: self._slice_changed(None, s), self._slice_changed,
                                lambda s: self._slice_changed(s, None))
        self.informers += [self.services, self.pods, self.endpoints, self.slices]

    # -- handlers: keep the indexes, enqueue service keys ---------------------------------

    def _service_changed(self, svc: v1.Service) -> None:
        m = svc.metadata
        self._svc_by_ns.setdefault(m.namespace, {})[m.name] = svc
        self.queue.add(f"{m.namespace}/{m.name}")

    def _service_gone(self, svc: v1.Service) -> None:
        m = svc.metadata
        self._svc_by_ns.get(m.namespace, {}).pop(m.name, None)
        self.queue.add(f"{m.namespace}/{m.name}")

    def _pod_changed(self, old: v1.Pod | None, new: v1.Pod | None) -> None:
        pod = new if new is not None else old
        ns, name = pod.metadata.namespace, pod.metadata.name
        pods = self._pods_by_ns.setdefault(ns, {})
        if new is None:
            pods.pop(name, None)
        else:
            pods[name] = new
        for svc in self._svc_by_ns.get(ns, {}).values():
            # a label change can make a pod leave a service: both versions count
            if (new is not None and desired.selects(svc, new)) or (old is not None and desired.selects(svc, old)):
                self.queue.add(f"{ns}/{svc.metadata.name}")

    def _enqueue_same_name(self, ep: v1.Endpoints) -> None:
        self.queue.add(f"{ep.metadata.namespace}/{ep.metadata.name}")

    def _slice_changed(self, old: v1.EndpointSlice | None, new: v1.EndpointSlice | None) -> None:
        for s, present in ((old, False), (new, True)):
            if s is None:
                continue
            svc = s.metadata.labels.get(desired.SERVICE_NAME_LABEL)
            if not svc:
                continue
            group = self._slices_by_svc.setdefault((s.metadata.namespace, svc), {})
            if present:
                group[s.metadata.name] = s
            elif new is None or new.metadata.labels.get(desired.SERVICE_NAME_LABEL) != svc:
                group.pop(s.metadata.name, None)
            self.queue.add(f"{s.metadata.namespace}/{svc}")

    # -- reconcile --------------------------------------------------------------------------

    async def reconcile(self, key: str) -> float | None:
        ns, name = key.split("/", 1)
        svc = self.services.get(key)
        if svc is None:
            await self._delete_all(ns, name)
            return None
        if not desired.managed(svc):
            return None
        pods = [p for p in self._pods_by_ns.get(ns, {}).values() if desired.selects(svc, p)]
        await self._sync_endpoints(svc, pods)
        await self._sync_slices(svc, pods)
        return None

    async def _sync_endpoints(self, svc: v1.Service, pods: list[v1.Pod]) -> None:
        ns, name = svc.metadata.namespace, svc.metadata.name
        subsets = desired.desired_subsets(svc, pods)
        labels = desired.endpoints_labels(svc)
        rc = self.client.resource("endpoints", ns)
        current = self.endpoints.get(f"{ns}/{name}")
        if current is None:
            ep = v1.Endpoints(subsets=subsets)
            ep.metadata.name, ep.metadata.namespace = name, ns
            ep.metadata.labels.update(labels)
            try:
                self.writes += 1
                written = await rc.create(ep)
            except AlreadyExists:
                written = await rc.get(name)  # the informer is behind: compare with the real one
                if list(written.subsets) == subsets and dict(written.metadata.labels) == labels:
                    self.endpoints.store[f"{ns}/{name}"] = written
                    return
                raise  # retried with backoff, by then the informer has it
            log.info("endpoints %s/%s created (%d subsets)", ns, name, len(subsets))
        elif list(current.subsets) == subsets and dict(current.metadata.labels) == labels:
            return
        else:
            ep = v1.Endpoints()
            ep.CopyFrom(current)
            del ep.subsets[:]
            ep.subsets.extend(subsets)
            ep.metadata.ClearField("labels")
            ep.metadata.labels.update(labels)
            self.writes += 1
            written = await rc.update(ep)  # a Conflict is retried with backoff
            log.info("endpoints %s/%s updated", ns, name)
        self.endpoints.store[f"{ns}/{name}"] = written  # count our write before the watch brings it

    async def _sync_slices(self, svc: v1.Service, pods: list[v1.Pod]) -> None:
        ns, name = svc.metadata.namespace, svc.metadata.name
        want = {s.metadata.name: s for s in desired.desired_slices(svc, pods)}
        have = dict(self._slices_by_svc.get((ns, name), {}))
        rc = self.client.resource("endpointslices", ns)
        for sname, s in want.items():
            cur = have.get(sname)
            if cur is None:
                try:
                    self.writes += 1
                    written = await rc.create(s)
                except AlreadyExists:
                    written = await rc.get(sname)
                    if not _slice_differs(written, s):
                        self._remember_slice(ns, name, written)
                        continue
                    raise
                log.info("endpointslice %s/%s created (%d endpoints)", ns, sname, len(s.endpoints))
            elif not _slice_differs(cur, s):
                continue
            else:
                upd = v1.EndpointSlice()
                upd.CopyFrom(cur)
                for f in ("addressType", "endpoints", "ports"):
                    upd.ClearField(f)
                upd.MergeFrom(v1.EndpointSlice(addressType=s.addressType, endpoints=s.endpoints, ports=s.ports))
                upd.metadata.ClearField("labels")
                upd.metadata.labels.update(s.metadata.labels)
                upd.metadata.ClearField("ownerReferences")
                upd.metadata.ownerReferences.extend(s.metadata.ownerReferences)
                self.writes += 1
                written = await rc.update(upd)
                log.info("endpointslice %s/%s updated (%d endpoints)", ns, sname, len(s.endpoints))
            self._remember_slice(ns, name, written)
        for sname in have.keys() - want.keys():
            await self._delete(rc, sname)
            self._slices_by_svc.get((ns, name), {}).pop(sname, None)

    def _remember_slice(self, ns: str, svc: str, s: v1.EndpointSlice) -> None:
        self.slices.store[f"{ns}/{s.metadata.name}"] = s
        self._slices_by_svc.setdefault((ns, svc), {})[s.metadata.name] = s

    async def _delete_all(self, ns: str, name: str) -> None:
        """The service is gone: so are its Endpoints and the slices we made for it."""
        if self.endpoints.get(f"{ns}/{name}") is not None:
            await self._delete(self.client.resource("endpoints", ns), name)
            self.endpoints.store.pop(f"{ns}/{name}", None)
        rc = self.client.resource("endpointslices", ns)
        for sname in list(self._slices_by_svc.get((ns, name), {})):
            await self._delete(rc, sname)
        self._slices_by_svc.pop((ns, name), None)

    async def _delete(self, rc, name: str) -> None:
        self.writes += 1
        try:
            await rc.delete(name)
            log.info("%s %s/%s deleted", rc.kind.resource, rc.namespace, name)
        except NotFound:
            pass


def _slice_differs(cur: v1.EndpointSlice, want: v1.EndpointSlice) -> bool:
    return (cur.addressType != want.addressType or list(cur.endpoints) != list(want.endpoints)
            or list(cur.ports) != list(want.ports) or dict(cur.metadata.labels) != dict(want.metadata.labels)
            or list(cur.metadata.ownerReferences) != list(want.metadata.ownerReferences))
