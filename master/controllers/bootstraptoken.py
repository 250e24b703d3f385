"""The tokencleaner controller (Kubernetes' pkg/controller/bootstrap): deletes bootstrap
token Secrets in kube-system once their expiration has passed, so an expired token is gone
and not merely refused (the API server's authenticator refuses it either way).
"""
from __future__ import annotations

import logging

from kubelab import meta
from kubelab.bootstrap import tokens
from kubelab.client.client import Client
from kubelab.client.controller import Controller
from kubelab.client.informer import Informer
from kubelab.errors import Conflict, NotFound

log = logging.getLogger("tokencleaner")


class TokenCleaner(Controller):
    name = "tokencleaner"
    workers = 1

    def __init__(self, client: Client):
        super().__init__()
        self.client = client
        self.secrets = self.watch(Informer(client.resource("secrets", tokens.NAMESPACE),
                                           field_selector=f"type={tokens.SECRET_TYPE}"))

    async def reconcile(self, key: str) -> float | None:
        s = self.secrets.get(key)
        if s is None or s.metadata.deletionTimestamp:
            return None
        exp = meta.parse_time(s.data.get("expiration", b"").decode(errors="replace"))
        if exp is None:
            return None  # never expires (or unreadable: validation refuses those on write)
        left = (exp - meta.now()).total_seconds()
        if left > 0:
            return left + 0.5  # look again when it is due
        try:
            await self.client.resource("secrets", s.metadata.namespace).delete(s.metadata.name, uid=s.metadata.uid)
            log.info("deleted expired bootstrap token secret %s", key)
        except (NotFound, Conflict):
            pass  # gone already, or replaced by a new token of that name: its own event comes
        return None
