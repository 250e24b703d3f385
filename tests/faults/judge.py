"""etcd as the judge of a fault test, read directly (never through the API server under
test): its history of /registry/pods/ from a watcher's start revision (pod_history), its
state at a revision (pod_state), and the comparison of each watcher's lists and events
with them (compare, judge) into a Verdict of lost, duplicated, unexpected and out-of-order
changes."""
from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kubelab.etcd.client import EtcdClient
from kubelab.etcd.txn import prefix_end
from tests.faults.deadline import DEADLINE

if TYPE_CHECKING:  # watchers.py reads etcd through this module
    from tests.faults.watchers import Recorders, WatchRecorder

PODS = b"/registry/pods/"
# The key just past the pods prefix ("/" + 1 == "0"): a raw etcd watch on [PODS, SENTINEL]
# sees it, the API server's watch of the prefix does not, and no resource is named "pods0".
SENTINEL = b"/registry/pods0"


@dataclass(frozen=True)
class Change:
    key: str  # "ns/name"
    type: str  # ADDED, MODIFIED, DELETED, as a watch reports them
    rv: int


async def pod_history(endpoint: str, after: int) -> tuple[list[Change], int]:
    """Every change to /registry/pods/ after revision `after`, from a raw etcd watch (so before
    any compaction of it), up to now; and the revision now. A sentinel put just past the prefix
    marks "now" in the watch's stream, so no progress notification has to be trusted."""
    out: list[Change] = []
    async with EtcdClient(endpoint) as c:
        now = await c.put(SENTINEL, b"now")
        async with asyncio.timeout(DEADLINE):
            async with c.watch(PODS, range_end=SENTINEL + b"\x00", start_revision=after + 1) as w:
                async for batch in w:
                    for ev in batch.events:
                        if ev.kv.key == SENTINEL:
                            if ev.kv.mod_revision >= now:
                                return out, now
                            continue
                        etype = ("DELETED" if ev.type == "DELETE" else
                                 "ADDED" if ev.kv.create_revision == ev.kv.mod_revision else "MODIFIED")
                        out.append(Change(ev.kv.key[len(PODS):].decode(), etype, ev.kv.mod_revision))
    raise AssertionError("etcd's watch ended before the sentinel")


async def pod_state(endpoint: str, revision: int = 0, ns: str = "") -> dict[str, int]:
    """key -> mod_revision of every pod (in ns) in etcd at revision (0: now)."""
    start = PODS + (f"{ns}/".encode() if ns else b"")
    out: dict[str, int] = {}
    async with EtcdClient(endpoint) as c:
        key, end, rev = start, prefix_end(start), revision
        while True:
            r = await c.range(key, range_end=end, limit=500, revision=rev)
            rev = rev or r.revision
            out.update({kv.key[len(PODS):].decode(): kv.mod_revision for kv in r.kvs})
            if not r.more:
                return out
            key = r.kvs[-1].key + b"\x00"


@dataclass
class Verdict:
    """How one watcher's events compare with etcd's history."""
    checked: int = 0  # changes in etcd's history the watcher had to see
    lost: int = 0  # of those, not seen
    duplicated: int = 0  # seen more than once
    unexpected: int = 0  # seen, but no such change in etcd (wrong type, rv or object)
    out_of_order: int = 0  # objects whose sequence was not in etcd's order
    problems: list[str] = field(default_factory=list)

    def add(self, other: "Verdict") -> None:
        self.checked += other.checked
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.unexpected += other.unexpected
        self.out_of_order += other.out_of_order
        self.problems += other.problems

    @property
    def ok(self) -> bool:
        return not self.problems  # every shortfall above also adds a line here


def compare(seen: list[tuple[str, str, int]], history: list[Change], ns: str, after: int, upto: int,
            who: str) -> Verdict:
    """The watcher saw exactly etcd's changes in ns in (after, upto], per object in etcd's order."""
    v = Verdict()
    want: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for ch in history:
        if after < ch.rv <= upto and ch.key.startswith(ns + "/"):
            want[ch.key].append((ch.type, ch.rv))
            v.checked += 1
    got: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for key, etype, rv in seen:
        got[key].append((etype, rv))
    for key in sorted(set(want) | set(got)):
        w, g = want.get(key, []), got.get(key, [])
        counts = collections.Counter(g)
        wanted = set(w)
        lost = [x for x in w if x not in counts]
        dup = sum(n - 1 for n in counts.values() if n > 1)
        extra = [x for x in counts if x not in wanted]
        v.lost += len(lost)
        v.duplicated += dup
        v.unexpected += len(extra)
        dedup = list(dict.fromkeys(g))
        if not lost and not extra and dedup != w:
            v.out_of_order += 1
        if lost or dup or extra or (dedup != w and not lost and not extra):
            v.problems.append(f"{who} {key}: etcd {w} watcher {g}")
    return v


async def judge(recorder: WatchRecorder, history: list[Change], endpoint: str, ns: str, upto: int,
                listings: dict[int, dict[str, int]] | None = None) -> Verdict:
    """Every segment of a recorder against etcd: its list equals etcd's state at the list's
    revision, its events equal etcd's history from there to the last revision it was told
    of (the final segment: up to `upto`, which it must have reached). `listings` may hold
    etcd's state at a revision read earlier (before a compaction made it unreadable)."""
    v = Verdict()
    for i, seg in enumerate(recorder.segments):
        final = i == len(recorder.segments) - 1
        state = (listings or {}).get(seg.start_rv)
        if state is None:
            state = await pod_state(endpoint, seg.start_rv, ns)
        if seg.listed != state:
            v.problems.append(f"{recorder.name} list at {seg.start_rv}: {len(seg.listed)} objects, etcd "
                              f"{len(state)}; differ on {sorted(set(seg.listed.items()) ^ set(state.items()))[:5]}")
            v.unexpected += len(set(seg.listed.items()) ^ set(state.items()))
        end = upto if final else seg.last_rv
        if final and seg.last_rv < upto:
            v.problems.append(f"{recorder.name} reached only revision {seg.last_rv} of {upto}")
        v.add(compare(seg.events, history, ns, seg.start_rv, end, recorder.name))
    return v


async def settle_and_judge(recs: "Recorders", churn, history: list[Change], endpoint: str, ns: str,
                           listings: dict[int, dict[str, int]] | None = None) -> tuple[Verdict, float]:
    """Wait until every recorder has seen the namespace's last change in `history`, stop the
    recorders and the lease churn, and judge each recorder against etcd. Returns the verdict
    and the monotonic time at which the last recorder got there."""
    last = max(ch.rv for ch in history if ch.key.startswith(ns + "/"))
    await recs.reached(last)
    reached = time.monotonic()
    await recs.stop()
    await churn.stop()
    verdict = Verdict()
    for r in recs.recorders:
        verdict.add(await judge(r, history, endpoint, ns, last, listings))
    return verdict, reached
