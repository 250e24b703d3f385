"""The generic registry store: create, get, list, update, delete for every kind on etcd
(Kubernetes' genericregistry.Store). One code path for all kinds; what differs per kind comes
from its Strategy (registry.py). Objects are stored as protobuf bytes under
/registry/<resource>/<namespace>/<name>; resourceVersion is etcd's mod_revision, so every
write is one etcd transaction comparing it.

LIST is paged in bytes as well as in objects, on both sides. Toward etcd every prefix range goes
through kubelab.etcd.pager (each etcd reply bounded in bytes). Toward the client one response
holds at most `limit` objects and at most list_page_bytes of them (always at least one object);
the rest comes with a continue token, with or without a limit, as Kubernetes allows a page to
hold fewer objects than the limit. Every page of a walk reads etcd at the first page's revision,
so the walk is one consistent snapshot (Gone once etcd compacted it). A list the watch cache
would answer (resourceVersion "0", or "N" without a limit) is answered from the cache when it
fits one page; a longer one is walked from etcd at the current revision instead, which "0" and
"not older than N" both allow, so that its continue token names a revision etcd still has.
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
from kubelab.etcd import rpc_pb2
from kubelab.etcd.client import CompactedError, Compare, EtcdClient, Op
from kubelab.etcd.pager import PAGE_BYTES, range_pages
from kubelab.etcd.txn import prefix_end
from kubelab.selectors import FieldSelector, LabelSelector

from . import registry
from .watchcache import WatchCache

EVENT_TTL_SECONDS = 3600
UPDATE_RETRIES = 16
# One List response carries at most this many bytes of objects (the rest comes with a continue
# token), well under the 64 MiB a client accepts; Options.list_page_bytes changes it.
LIST_PAGE_BYTES = PAGE_BYTES
MAX_LIST_LIMIT = 10000  # a larger `limit` is served as this many per page, as a continue walk


class Store:
    def __init__(self, kind: kinds.Kind, etcd: EtcdClient, cache: WatchCache | None,
                 namespaces: "Store | None" = None, *, list_page_bytes: int = LIST_PAGE_BYTES):
        self.kind = kind
        self.strategy = registry.STRATEGIES[kind.resource]
        self.etcd = etcd
        self.cache = cache
        self.namespaces = namespaces  # to check that a namespace exists before a create
        self.prefix = f"/registry/{kind.resource}/"
        self.list_page_bytes = list_page_bytes
        self._lease = (0, 0.0)  # events: (etcd lease id, valid until)
        # services: ClusterIPs and NodePorts, allocated and released in the same transactions
        # as the objects that hold them (allocator.py); None for every other kind
        self.allocator = None

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

    async def _read(self, namespace: str, name: str, expected_rv: str = "") -> tuple[Message, bytes, int, bool]:
        """Current object, raw bytes, mod_revision, and whether it came from the watch cache
        (it does when the cache holds the expected version; a write then still compares it
        in etcd, and a no-op must confirm it there, the cache may be behind)."""
        if self.cache is not None and expected_rv:
            e = self.cache.get(namespace if self.kind.namespaced else "", name)
            if e is not None and str(e.rv) == expected_rv:
                return self.decode(e.raw, e.rv), e.raw, e.rv, True
        kv, _ = await self.etcd.get(self.key(namespace, name))
        if kv is None:
            raise not_found(self.kind.resource, name)
        return self.decode(kv.value, kv.mod_revision), kv.value, kv.mod_revision, False

    async def _put(self, key: bytes, raw: bytes) -> rpc_pb2.RequestOp:
        """The put of an object; events are written with the current event lease on every write
        (as Kubernetes' event TTL applies on update too), so a repeating event expires an hour
        after its last update instead of never."""
        lease = await self._event_lease() if self.kind.resource == "events" else 0
        return Op.put(key, raw, lease=lease)

    # -- create --
    async def create(self, namespace: str, obj: Message, *, dry_run: bool = False) -> bytes:
        """Store a new object. dry_run (dryRun=All): everything up to the transaction, which then
        only compares (the name free, the namespace as checked, the addresses and ports picked
        free) and writes nothing; the answer is the object as it would be, without a
        resourceVersion, as Kubernetes answers a dry-run create."""
        m = obj.metadata
        if self.kind.namespaced:
            if m.namespace and namespace and m.namespace != namespace:
                raise BadRequest("the namespace of the provided object does not match the namespace "
                                 "sent on the request")
            m.namespace = m.namespace or namespace or "default"
        ns_rev = await self.check_namespace(m.namespace) if self.kind.namespaced else 0
        if not m.name and m.generateName:
            m.name = registry.generate_name(m.generateName)
        self.strategy.prepare_create(obj)
        self.strategy.validate(obj)
        asked = type(obj.spec)() if self.allocator else None
        if asked is not None:
            asked.CopyFrom(obj.spec)  # what was asked for: every attempt allocates from it again
        renames = 0
        for _ in range(UPDATE_RETRIES):
            plan = None
            if asked is not None:
                obj.spec.CopyFrom(asked)
                plan = await self.allocator.plan_create(obj)
            raw = self.encode(obj)
            key = self.key(m.namespace, m.name)
            guards, otherwise = [Compare.create_revision(key, "==", 0)], []
            if ns_rev:
                # the namespace as checked, in the same transaction: a namespace marked for
                # deletion (or deleted) since the check fails the create instead of gaining content
                ns_key = self.namespaces.key("", m.namespace)
                guards.append(Compare.mod_revision(ns_key, "==", ns_rev))
                otherwise = [Op.get(ns_key, keys_only=True)]
            # a dry run's transaction only compares: etcd writes nothing and keeps its revision
            ops = [] if dry_run else [await self._put(key, raw)]
            if plan is not None:
                guards += plan.guards()
                ops += [] if dry_run else plan.ops()
                otherwise += [Op.get(key, keys_only=True)] + plan.reads()
            res = await self.etcd.txn(guards, ops, otherwise)
            if res.succeeded:
                return raw if dry_run else raw + meta.rv_suffix(res.revision)
            if ns_rev:
                now = res.responses[0].kvs
                if not now or now[0].mod_revision != ns_rev:
                    # the namespace changed (or the cache was behind): check it again in etcd
                    ns_rev = await self.check_namespace(m.namespace, fresh=True)
                    continue
            if plan is not None:
                rest = res.responses[1 if ns_rev else 0:]
                if not rest[0].kvs and plan.lost(rest[1:]):
                    continue  # an address or port picked was taken meanwhile: pick again
            if m.generateName and renames < 4:
                renames += 1
                m.name = registry.generate_name(m.generateName)
                continue
            raise already_exists(self.kind.resource, m.name)
        raise conflict(self.kind.resource, m.name)

    async def check_namespace(self, namespace: str, *, fresh: bool = False) -> int:
        """The namespace's mod_revision if content may be created in it (0 when this store
        does not check); NotFound or Forbidden (Terminating) otherwise."""
        if self.namespaces is None:
            return 0
        ns, rev = None, 0
        e = self.namespaces.cache.get("", namespace) if self.namespaces.cache and not fresh else None
        if e is not None:
            ns, rev = self.namespaces.decode(e.raw, e.rv), e.rv
        else:
            kv, _ = await self.etcd.get(self.namespaces.key("", namespace))
            if kv is not None:
                ns, rev = self.namespaces.decode(kv.value, kv.mod_revision), kv.mod_revision
        if ns is None:
            raise not_found("namespaces", namespace)
        if ns.status.phase == "Terminating" or ns.metadata.deletionTimestamp:
            raise Forbidden(f'{self.kind.resource} "{namespace}" is forbidden: unable to create new content '
                            f'in namespace {namespace} because it is being terminated')
        return rev

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
        """One page of a LIST: (items, resourceVersion, continue token, remaining count or None).

        A page holds at most `limit` objects (0: no limit; above MAX_LIST_LIMIT: that many) and
        at most list_page_bytes of them (always at least one). Whatever does not fit comes with
        a continue token, as in Kubernetes a client must follow the token until it is empty,
        with or without a limit; every page of one walk reads etcd at the first page's revision.
        """
        if limit < 0:
            raise BadRequest(f"limit: Invalid value: {limit}: must be greater than or equal to 0")
        limit = min(limit, MAX_LIST_LIMIT)
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
            entries.sort(key=lambda e: f"{e.namespace}/{e.name}" if e.namespace else e.name)  # etcd key order
            items = [e.raw + meta.rv_suffix(e.rv) for e in entries]
            if (limit and len(items) > limit) or sum(map(len, items)) > self.list_page_bytes:
                # More than one page. A continue token names an etcd revision to read the rest
                # at, and the cache's may already be compacted (an idle resource's cache stays
                # at its last event), so the walk starts from etcd now instead: a newer state,
                # which both "0" and "not older than N" allow.
                return await self._list_etcd(ns, labels, fields, limit, "", "")
            return items, rv, "", None
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
            if rev < 0:
                raise BadRequest(f'invalid resource version "{resource_version}"')
        filtering = not (labels.empty() and fields.empty())
        items: list[bytes] = []
        size, nxt = 0, b""
        try:
            async for page in range_pages(self.etcd, start, end, revision=rev, max_bytes=self.list_page_bytes,
                                          max_count=max(limit, 500) if filtering else (limit or 1000)):
                rev = page.revision
                for i, kv in enumerate(page.kvs):
                    if filtering and not self._matches(kv.value, labels, fields):
                        continue
                    item = kv.value + meta.rv_suffix(kv.mod_revision)
                    if items and size + len(item) > self.list_page_bytes:
                        nxt = kv.key  # this one starts the next page
                        break
                    items.append(item)
                    size += len(item)
                    if limit and len(items) >= limit:
                        if page.more or i < len(page.kvs) - 1:
                            nxt = kv.key + b"\x00"
                        break
                if nxt or (limit and len(items) >= limit):
                    break
            if not nxt:
                return items, rev, "", None
            remaining = None
            if not filtering:
                remaining = (await self.etcd.range(nxt, range_end=end, revision=rev, count_only=True)).count
            return items, rev, encode_continue(rev, nxt, prefix), remaining
        except CompactedError:
            if token:
                raise Gone("The provided continue parameter is too old to display a consistent list "
                           "result. You can start a new list without the continue parameter, or use "
                           "the continue token in this response to retrieve the remainder of the "
                           "results.") from None
            raise Gone(f"too old resource version: {resource_version}") from None

    def _matches(self, raw: bytes, labels: LabelSelector, fields: FieldSelector) -> bool:
        try:
            obj = self.kind.message.FromString(raw)
        except DecodeError:
            return False
        from kubelab.selectors import field_set
        return labels.matches(obj.metadata.labels) and fields.matches(field_set(obj, fields.paths()))

    # -- update --
    async def update(self, namespace: str, obj: Message, *, status: bool = False,
                     dry_run: bool = False) -> bytes:
        """Replace an object (its status only, with status). dry_run: the same checks, a
        transaction that only compares, and the answer as it would be, at the current
        resourceVersion (nothing was written)."""
        name = obj.metadata.name
        if not name:
            raise registry.Invalid(f"{self.kind.resource} is invalid: metadata.name: Required value")
        if self.kind.namespaced:
            namespace = obj.metadata.namespace or namespace or "default"
        expected = obj.metadata.resourceVersion
        key = self.key(namespace, name)
        cached_ok = True
        for _ in range(UPDATE_RETRIES):
            # after a failed compare, read etcd itself: the object may be changed or gone
            old, old_raw, old_rv, cached = await self._read(namespace, name, expected if cached_ok else "")
            cached_ok = False
            if expected and expected != str(old_rv):
                raise conflict(self.kind.resource, name)
            if status:
                new = self.strategy.prepare_status_update(obj, old)
            else:
                new = self.kind.message()
                new.CopyFrom(obj)
                self.strategy.prepare_update(new, old)
            self.strategy.validate(new, old)
            if self._delete_on_update(new, old):
                res = await self.etcd.txn([Compare.mod_revision(key, "==", old_rv)],
                                          [] if dry_run else [Op.delete(key)] + self._release(old))
                if res.succeeded:
                    return self.encode(new) + meta.rv_suffix(old_rv if dry_run else res.revision)
                continue
            plan = await self.allocator.plan_update(new, old) if self.allocator and not status else None
            raw = self.encode(new)
            if raw == old_raw:
                # no-op updates keep the resourceVersion; one read from the cache is confirmed
                # in etcd first, or a stale rv (or a deleted object) would get success
                if not cached or (await self.etcd.txn([Compare.mod_revision(key, "==", old_rv)], [])).succeeded:
                    return raw + meta.rv_suffix(old_rv)
                continue
            guards, otherwise = [Compare.mod_revision(key, "==", old_rv)], []
            ops = [] if dry_run else [await self._put(key, raw)]
            if plan is not None:
                guards, otherwise = guards + plan.guards(), plan.reads()
                ops += [] if dry_run else plan.ops()
            res = await self.etcd.txn(guards, ops, otherwise)
            if res.succeeded:
                return raw + meta.rv_suffix(old_rv if dry_run else res.revision)
            if plan is not None:
                plan.lost(res.responses)  # Invalid when a nodePort asked for is taken
        raise conflict(self.kind.resource, name)

    def _release(self, obj: Message) -> list:
        return self.allocator.release(obj) if self.allocator else []

    def _delete_on_update(self, new: Message, old: Message) -> bool:
        """Kubernetes' rule: an object marked for deletion goes with the update that removes
        its last finalizer, once its grace period is over (0: nothing else to wait for; a pod
        gets 0 when unbound or finished, or when its kubelet confirmed the containers stopped).
        A namespace also waits for its spec.finalizers (the namespace controller's)."""
        m = new.metadata
        if not old.metadata.deletionTimestamp or m.finalizers:
            return False
        if old.metadata.deletionGracePeriodSeconds != 0:
            return False
        if self.kind.resource == "namespaces":
            return not new.spec.finalizers
        return True

    # -- binding (pods/binding) --
    async def bind(self, namespace: str, binding, *, dry_run: bool = False) -> bytes:
        """pods/binding: set an unbound pod's node (dry_run: the same checks, nothing written)."""
        name = binding.metadata.name
        expected = binding.metadata.resourceVersion
        key = self.key(namespace, name)
        cached_ok = True
        for _ in range(UPDATE_RETRIES):
            pod, _, rv, _ = await self._read(namespace, name, expected if cached_ok else "")
            cached_ok = False
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
            raw = self.encode(pod)
            res = await self.etcd.txn([Compare.mod_revision(key, "==", rv)], [] if dry_run else [Op.put(key, raw)])
            if res.succeeded:
                return raw + meta.rv_suffix(rv if dry_run else res.revision)
        raise conflict("pods/binding", name)

    # -- delete --
    async def delete(self, namespace: str, name: str, *, grace: int | None = None,
                     uid: str = "", resource_version: str = "", dry_run: bool = False,
                     propagation_policy: str = "") -> bytes:
        """Delete an object, or mark it for graceful deletion (pods with a grace period, objects
        with finalizers, namespaces). Preconditions (uid, resourceVersion) are checked first.
        dry_run: the same checks and a transaction that only compares; the answer is the
        object as the delete would leave it. propagation_policy (DeleteOptions): validated;
        kubelab has no garbage collector, so dependents are never deleted by it (Orphan's
        behaviour whatever the policy, see docs/api.md)."""
        check_propagation_policy(propagation_policy)
        for _ in range(UPDATE_RETRIES):
            obj, _, rv, _ = await self._read(namespace, name)
            if uid and obj.metadata.uid != uid:
                raise Conflict(f'Operation cannot be fulfilled on {self.kind.resource} "{name}": '
                               f'Precondition failed: UID in precondition: {uid}, UID in object meta: '
                               f'{obj.metadata.uid}')
            if resource_version and resource_version != str(rv):
                raise conflict(self.kind.resource, name)
            key = self.key(namespace, name)
            mark = self._graceful(obj, grace)
            if mark is None:
                res = await self.etcd.txn([Compare.mod_revision(key, "==", rv)],
                                          [] if dry_run else [Op.delete(key)] + self._release(obj))
                if res.succeeded:
                    return self.encode(obj) + meta.rv_suffix(rv if dry_run else res.revision)
                continue
            if not mark:
                return self.encode(obj) + meta.rv_suffix(rv)  # already terminating, nothing to change
            raw = self.encode(obj)
            res = await self.etcd.txn([Compare.mod_revision(key, "==", rv)],
                                      [] if dry_run else [await self._put(key, raw)])
            if res.succeeded:
                return raw + meta.rv_suffix(rv if dry_run else res.revision)
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


PROPAGATION_POLICIES = ("Foreground", "Background", "Orphan")


def check_propagation_policy(policy: str) -> None:
    """DeleteOptions.propagationPolicy: one of Kubernetes' three, or unset ("")."""
    if policy and policy not in PROPAGATION_POLICIES:
        raise registry.Invalid(f'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported '
                               f'value: "{policy}": supported values: "Foreground", "Background", '
                               f'"Orphan", "nil"')


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
        rev, start = int(d["rv"]), prefix + d["start"].encode("utf-8", "surrogateescape")
        if rev <= 0:
            raise ValueError("no revision")
        return rev, start
    except Exception:  # noqa: BLE001 - any garbage is the client's error
        raise BadRequest(f'invalid continue token "{token[:40]}"') from None
