"""The generic registry store: create, get, list, update, delete for every kind on etcd
(Kubernetes' genericregistry.Store). One code path for all kinds; what differs per kind comes
from its Strategy (registry.py). Objects are stored as protobuf bytes under
/registry/<resource>/<namespace>/<name>; resourceVersion is etcd's mod_revision, so every
write is one etcd transaction comparing it.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import time

from google.protobuf.message import DecodeError, Message

from kubelab import meta
from kubelab.api import kinds
from kubelab.errors import (BadRequest, Conflict, Forbidden, Gone, already_exists, conflict,
                            not_found)
from kubelab.etcd.client import Compare, EtcdClient, Op
from kubelab.etcd.txn import prefix_end
from kubelab.selectors import FieldSelector, LabelSelector

from . import registry
from .watchcache import WatchCache

EVENT_TTL_SECONDS = 3600
UPDATE_RETRIES = 16


class Store:
    def __init__(self, kind: kinds.Kind, etcd: EtcdClient, cache: WatchCache | None,
                 namespaces: "Store | None" = None):
        self.kind = kind
        self.strategy = registry.STRATEGIES[kind.resource]
        self.etcd = etcd
        self.cache = cache
        self.namespaces = namespaces  # to check that a namespace exists before a create
        self.prefix = f"/registry/{kind.resource}/"
        self._lease = (0, 0.0)  # events: (etcd lease id, valid until)

    # -- keys and bytes --
    def key(self, namespace: str, name: str) -> bytes:
        return (self.prefix + (f"{namespace}/{name}" if self.kind.namespaced else name)).encode()

    def decode(self, raw: bytes, rv: int) -> Message:
        obj = self.kind.message.FromString(raw)
        obj.metadata.resourceVersion = str(rv)
        return obj

    def encode(self, obj: Message) -> bytes:
        obj.metadata.resourceVersion = ""
        raw = obj.SerializeToString()
        registry.check_size(raw, self.kind, obj.metadata.name)
        return raw

    async def _read(self, namespace: str, name: str, expected_rv: str = "") -> tuple[Message, bytes, int]:
        """Current object; from the watch cache when it already holds the expected version."""
        if self.cache is not None and expected_rv:
            e = self.cache.get(namespace if self.kind.namespaced else "", name)
            if e is not None and str(e.rv) == expected_rv:
                return self.decode(e.raw, e.rv), e.raw, e.rv
        kv, _ = await self.etcd.get(self.key(namespace, name))
        if kv is None:
            raise not_found(self.kind.resource, name)
        return self.decode(kv.value, kv.mod_revision), kv.value, kv.mod_revision

    # -- create --
    async def create(self, namespace: str, obj: Message) -> bytes:
        m = obj.metadata
        if self.kind.namespaced:
            if m.namespace and namespace and m.namespace != namespace:
                raise BadRequest("the namespace of the provided object does not match the namespace "
                                 "sent on the request")
            m.namespace = m.namespace or namespace or "default"
            await self.check_namespace(m.namespace)
        if not m.name and m.generateName:
            m.name = registry.generate_name(m.generateName)
        self.strategy.prepare_create(obj)
        self.strategy.validate(obj)
        for attempt in range(5):
            raw = self.encode(obj)
            key = self.key(m.namespace, m.name)
            lease = await self._event_lease() if self.kind.resource == "events" else 0
            res = await self.etcd.txn([Compare.create_revision(key, "==", 0)],
                                      [Op.put(key, raw, lease=lease)])
            if res.succeeded:
                return raw + meta.rv_suffix(res.revision)
            if m.generateName and attempt < 4:
                m.name = registry.generate_name(m.generateName)
                continue
            raise already_exists(self.kind.resource, m.name)
        raise AssertionError("unreachable")

    async def check_namespace(self, namespace: str) -> None:
        if self.namespaces is None:
            return
        ns = None
        e = self.namespaces.cache.get("", namespace) if self.namespaces.cache else None
        if e is not None:
            ns = self.namespaces.decode(e.raw, e.rv)
        else:
            kv, _ = await self.etcd.get(self.namespaces.key("", namespace))
            if kv is not None:
                ns = self.namespaces.decode(kv.value, kv.mod_revision)
        if ns is None:
            raise not_found("namespaces", namespace)
        if ns.status.phase == "Terminating":
            raise Forbidden(f'{self.kind.resource} "{namespace}" is forbidden: unable to create new content '
                            f'in namespace {namespace} because it is being terminated')

    async def _event_lease(self) -> int:
        """Events expire after an hour, through an etcd lease shared by ten minutes of events."""
        lease, until = self._lease
        now = time.monotonic()
        if not lease or now > until:
            lease = await self.etcd.lease_grant(EVENT_TTL_SECONDS + 600)
            self._lease = (lease, now + 600)
        return lease

    # -- get and list --
    async def get(self, namespace: str, name: str) -> bytes:
        kv, _ = await self.etcd.get(self.key(namespace, name))
        if kv is None:
            raise not_found(self.kind.resource, name)
        return kv.value + meta.rv_suffix(kv.mod_revision)

    async def list(self, namespace: str, label_selector: str, field_selector: str, *, limit: int = 0,
                   continue_token: str = "", resource_version: str = "") -> tuple[list[bytes], int, str, int | None]:
        labels = LabelSelector.parse(label_selector)
        fields = FieldSelector.parse(field_selector, self.kind.field_selectors, self.kind.kind)
        ns = namespace if self.kind.namespaced else ""
        # "0": any version will do; "N" without a limit: not older than N. Both come from the
        # watch cache (after it has caught up with N); "" is a consistent read from etcd.
        # (A cache that has not applied N yet sends the list to etcd: progress notifications
        # alone cannot prove the cache holds everything up to N, see watchcache._deliver.)
        if resource_version and not continue_token and self.cache is not None and (
                resource_version == "0" or not limit):
            await self.cache.wait_ready()
            if resource_version != "0":
                from .watchcache import parse_rv
                want = parse_rv(resource_version)
                if self.cache.applied_rv < want:
                    return await self._list_etcd(ns, labels, fields, limit, "", "")
            entries, rv = self.cache.list(ns, labels, fields)
            entries.sort(key=lambda e: (e.namespace, e.name))
            return [e.raw + meta.rv_suffix(e.rv) for e in entries], rv, "", None
        return await self._list_etcd(ns, labels, fields, limit, continue_token, resource_version)

    async def _list_etcd(self, ns, labels, fields, limit, token, resource_version):
        prefix = (self.prefix + (f"{ns}/" if ns else "")).encode()
        end = prefix_end(prefix)
        start, rev = prefix, 0
        if token:
            rev, start = decode_continue(token, prefix)
        elif resource_version not in ("", "0"):
            try:
                rev = int(resource_version)
            except ValueError:
                raise BadRequest(f'invalid resource version "{resource_version}"') from None
        filtering = not (labels.empty() and fields.empty())
        items: list[bytes] = []
        page = max(limit, 500) if filtering else (limit or 1000)
        while True:
            try:
                res = await self.etcd.range(start, range_end=end, limit=page, revision=rev)
            except Exception as e:  # noqa: BLE001
                if "compacted" in str(e).lower():
                    raise Gone("The provided continue parameter is too old to display a consistent list "
                               "result. You can start a new list without the continue parameter, or use "
                               "the continue token in this response to retrieve the remainder of the "
                               "results.") from None
                raise
            rev = rev or res.revision
            for i, kv in enumerate(res.kvs):
                if filtering and not self._matches(kv.value, labels, fields):
                    continue
                items.append(kv.value + meta.rv_suffix(kv.mod_revision))
                if limit and len(items) >= limit:
                    more = res.more or i < len(res.kvs) - 1
                    if more:
                        nxt = kv.key + b"\x00"
                        remaining = None if filtering else res.count - (i + 1)
                        return items, rev, encode_continue(rev, nxt, prefix), remaining
                    return items, rev, "", None
            if not res.more or not res.kvs:
                return items, rev, "", None
            start = res.kvs[-1].key + b"\x00"

    def _matches(self, raw: bytes, labels: LabelSelector, fields: FieldSelector) -> bool:
        try:
            obj = self.kind.message.FromString(raw)
        except DecodeError:
            return False
        from kubelab.selectors import field_set
        return labels.matches(obj.metadata.labels) and fields.matches(field_set(obj, fields.paths()))

    # -- update --
    async def update(self, namespace: str, obj: Message, *, status: bool = False) -> bytes:
        name = obj.metadata.name
        if not name:
            raise registry.Invalid(f"{self.kind.resource} is invalid: metadata.name: Required value")
        if self.kind.namespaced:
            namespace = obj.metadata.namespace or namespace or "default"
        expected = obj.metadata.resourceVersion
        for _ in range(UPDATE_RETRIES):
            old, old_raw, old_rv = await self._read(namespace, name, expected)
            if expected and expected != str(old_rv):
                raise conflict(self.kind.resource, name)
            if status:
                new = self.strategy.prepare_status_update(obj, old)
            else:
                new = self.kind.message()
                new.CopyFrom(obj)
                self.strategy.prepare_update(new, old)
            self.strategy.validate(new, old)
            key = self.key(namespace, name)
            if new.metadata.deletionTimestamp and self._finalized(new):
                res = await self.etcd.txn([Compare.mod_revision(key, "==", old_rv)], [Op.delete(key)])
                if res.succeeded:
                    return self.encode(new) + meta.rv_suffix(res.revision)
            else:
                raw = self.encode(new)
                if raw == old_raw:
                    return raw + meta.rv_suffix(old_rv)  # no-op updates keep the resourceVersion
                res = await self.etcd.txn([Compare.mod_revision(key, "==", old_rv)], [Op.put(key, raw)])
                if res.succeeded:
                    return raw + meta.rv_suffix(res.revision)
            if expected:
                raise conflict(self.kind.resource, name)
            expected = ""
        raise conflict(self.kind.resource, name)

    def _finalized(self, obj: Message) -> bool:
        """An object marked for deletion goes once nothing holds it back."""
        if obj.metadata.finalizers:
            return False
        if self.kind.resource == "namespaces":
            return not obj.spec.finalizers
        return self.kind.resource != "pods"  # pods go when their kubelet confirms (delete, grace 0)

    # -- binding (pods/binding) --
    async def bind(self, namespace: str, binding) -> bytes:
        name = binding.metadata.name
        expected = binding.metadata.resourceVersion
        for _ in range(UPDATE_RETRIES):
            pod, _, rv = await self._read(namespace, name, expected)
            if expected and expected != str(rv):
                raise conflict("pods/binding", name)
            if pod.metadata.deletionTimestamp:
                raise Conflict(f'Operation cannot be fulfilled on pods/binding "{name}": pod {name} '
                               'is being deleted, cannot be assigned to a host')
            if pod.spec.nodeName:
                raise Conflict(f'Operation cannot be fulfilled on pods/binding "{name}": pod {name} '
                               f'is already assigned to node "{pod.spec.nodeName}"')
            pod.spec.nodeName = binding.target.name
            set_condition(pod.status.conditions, "PodScheduled", "True")
            key = self.key(namespace, name)
            raw = self.encode(pod)
            res = await self.etcd.txn([Compare.mod_revision(key, "==", rv)], [Op.put(key, raw)])
            if res.succeeded:
                return raw + meta.rv_suffix(res.revision)
            if expected:
                raise conflict("pods/binding", name)
        raise conflict("pods/binding", name)

    # -- delete --
    async def delete(self, namespace: str, name: str, *, grace: int | None = None,
                     uid: str = "", resource_version: str = "") -> bytes:
        for _ in range(UPDATE_RETRIES):
            obj, _, rv = await self._read(namespace, name)
            if uid and obj.metadata.uid != uid:
                raise Conflict(f'Operation cannot be fulfilled on {self.kind.resource} "{name}": '
                               f'Precondition failed: UID in precondition: {uid}, UID in object meta: '
                               f'{obj.metadata.uid}')
            if resource_version and resource_version != str(rv):
                raise conflict(self.kind.resource, name)
            key = self.key(namespace, name)
            mark = self._graceful(obj, grace)
            if mark is None:
                res = await self.etcd.txn([Compare.mod_revision(key, "==", rv)], [Op.delete(key)])
                if res.succeeded:
                    return self.encode(obj) + meta.rv_suffix(res.revision)
                continue
            if not mark:
                return self.encode(obj) + meta.rv_suffix(rv)  # already terminating, nothing to change
            raw = self.encode(obj)
            res = await self.etcd.txn([Compare.mod_revision(key, "==", rv)], [Op.put(key, raw)])
            if res.succeeded:
                return raw + meta.rv_suffix(res.revision)
        raise conflict(self.kind.resource, name)

    def _graceful(self, obj: Message, grace: int | None) -> bool | None:
        """Mark obj for graceful deletion in place. None: delete now; False: nothing to change."""
        m = obj.metadata
        now = meta.now()
        if self.kind.resource == "namespaces":
            registry.NamespaceStrategy.check_delete(m.name)
            if m.deletionTimestamp:
                return False
            m.deletionTimestamp = meta.rfc3339(now)
            m.deletionGracePeriodSeconds = 0
            obj.status.phase = "Terminating"
            return True
        if self.kind.resource == "pods":
            if grace is None:
                grace = obj.spec.terminationGracePeriodSeconds if obj.spec.HasField(
                    "terminationGracePeriodSeconds") else 30
            if not obj.spec.nodeName or obj.status.phase in ("Succeeded", "Failed"):
                grace = 0
            if grace <= 0 and not m.finalizers:
                return None
            if m.deletionTimestamp and m.deletionGracePeriodSeconds <= grace:
                return False
            m.deletionTimestamp = meta.rfc3339(now + dt.timedelta(seconds=grace))
            m.deletionGracePeriodSeconds = grace
            return True
        if not m.finalizers:
            return None
        if m.deletionTimestamp:
            return False
        m.deletionTimestamp = meta.rfc3339(now)
        m.deletionGracePeriodSeconds = 0
        return True


def set_condition(conditions, ctype: str, status: str, reason: str = "", message: str = "") -> None:
    for c in conditions:
        if c.type == ctype:
            if c.status != status:
                c.lastTransitionTime = meta.rfc3339()
            c.status, c.reason, c.message = status, reason, message
            return
    conditions.add(type=ctype, status=status, reason=reason, message=message,
                   lastTransitionTime=meta.rfc3339())


def encode_continue(rev: int, start: bytes, prefix: bytes) -> str:
    data = json.dumps({"v": 1, "rv": rev, "start": start[len(prefix):].decode("utf-8", "surrogateescape")})
    return base64.urlsafe_b64encode(data.encode()).decode()


def decode_continue(token: str, prefix: bytes) -> tuple[int, bytes]:
    try:
        d = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(d["rv"]), prefix + d["start"].encode("utf-8", "surrogateescape")
    except Exception:  # noqa: BLE001 - any garbage is the client's error
        raise BadRequest(f'invalid continue token "{token[:40]}"') from None
