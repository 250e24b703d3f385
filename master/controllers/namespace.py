"""The namespace controller: when a namespace is being deleted (Terminating), delete
everything in it, and when nothing is left remove the `kubernetes` finalizer so that the API
server removes the namespace itself.
"""
from __future__ import annotations

import logging

from kubelab.api import kinds
from kubelab.client.client import Client
from kubelab.client.controller import Controller
from kubelab.client.informer import Informer
from kubelab.errors import Conflict, NotFound

log = logging.getLogger("namespace-controller")


class NamespaceController(Controller):
    name = "namespace"
    workers = 2

    def __init__(self, client: Client, *, recheck: float = 2.0):
        super().__init__()
        self.client, self.recheck = client, recheck
        self.namespaces = self.watch(Informer(client.namespaces()))

    async def reconcile(self, name: str) -> float | None:
        ns = self.namespaces.get(name)
        if ns is None or not ns.metadata.deletionTimestamp:
            return None
        remaining = 0
        for kind in kinds.KINDS:
            if not (kind.namespaced and kind.stored):
                continue
            rc = self.client.resource(kind, name)
            objs = (await rc.list_all()).items
            remaining += len(objs)
            for obj in objs:
                # Objects already marked are deleted again too, as Kubernetes' namespace deleter
                # does (DeleteCollection on every pass): a delete of a marked object changes
                # nothing while its finalizers or grace period hold it, and removes one that
                # nothing holds any more (say, marked by an older API server that left it).
                try:
                    await rc.delete(obj.metadata.name, uid=obj.metadata.uid)
                except (NotFound, Conflict):
                    pass  # gone, or a new object of that name: the next pass sees it
        if remaining:
            log.info("namespace %s: %d objects remaining", name, remaining)
            return self.recheck
        try:
            fresh = await self.client.namespaces().get(name)
        except NotFound:
            return None
        del fresh.spec.finalizers[:]
        await self.client.namespaces().update(fresh)
        log.info("namespace %s: content deleted, finalized", name)
        return None
