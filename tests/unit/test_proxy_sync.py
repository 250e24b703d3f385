"""worker/proxy: partial syncs (rules.build's `only`), the nft restore layout, the UDP conntrack
cleanups (conntrack.py), the backend detection and which commands the proxier runs for a first,
a partial and a periodic full sync. Commands go to a recording runner (pure logic; the real
iptables and conntrack are in tests/integration/test_proxy.py)."""
from __future__ import annotations

import asyncio

from worker.network.cmd import Completed
from worker.proxy import rules as rl
from worker.proxy.conntrack import Conntrack, cleanups
from worker.proxy.model import Endpoint, ProxyState, ServicePort
from worker.proxy.proxier import Proxier, ProxyConfig, SyncError, detect_backend

CIDR = "10.244.0.0/16"
WEB = ServicePort("ns", "web", "http", "TCP", "10.96.0.20", 80, node_port=30080)
API = ServicePort("ns", "api", "", "TCP", "10.96.0.21", 443)
DNS = ServicePort("ns", "dns", "dns", "UDP", "10.96.0.10", 53, node_port=30053)
A, B, C = Endpoint("10.244.1.2", 8080, "n1"), Endpoint("10.244.1.3", 8080, "n1"), Endpoint("10.244.2.2", 8080, "n2")


def body(text: str, table: str) -> list[str]:
    return text.split(f"*{table}\n", 1)[1].split("COMMIT\n", 1)[0].splitlines()


def shared(text: str) -> list[str]:
    """The lines of the chains every sync writes whole."""
    return [ln for t in ("nat", "filter") for ln in body(text, t)
            if ln.startswith(("-A KUBE-SERVICES ", "-A KUBE-NODEPORTS ", "-A KUBE-EXTERNAL-SERVICES "))]


def test_partial_build_writes_only_the_changed_service_and_the_shared_chains_whole():
    before = ProxyState([WEB, API], {WEB.key: [A, B], API.key: [C]})
    full = rl.build(before, cluster_cidr=CIDR)
    after = ProxyState([WEB, API], {WEB.key: [A], API.key: [C]})  # B left web
    part = rl.build(after, cluster_cidr=CIDR, only={WEB.key}, existing={"nat": rl.TableState(full.chains["nat"])})
    nat = body(part.text, "nat")
    declared = {ln[1:].split()[0] for ln in nat if ln.startswith(":")}
    web_chains = {rl.svc_chain(WEB), rl.ext_chain(WEB), rl.sep_chain(WEB, A)}
    assert declared >= web_chains and rl.svc_chain(API) not in declared and rl.sep_chain(API, C) not in declared
    assert not any(ln.startswith((f"-A {rl.svc_chain(API)} ", f"-A {rl.sep_chain(API, C)} ")) for ln in nat)
    assert part.deleted_chains == [rl.sep_chain(WEB, B)] and f"-X {rl.sep_chain(WEB, B)}" in nat
    # KUBE-SERVICES, KUBE-NODEPORTS and the filter chains as a full build of the same state writes them
    assert shared(part.text) == shared(rl.build(after, cluster_cidr=CIDR).text)
    assert part.chains["nat"] == rl.build(after, cluster_cidr=CIDR).chains["nat"]
    assert (part.services, part.endpoints, part.written) == (2, 2, 1)
    # the NodePort service unchanged, the other one written: its lines in the shared chains stay
    other = rl.build(after, cluster_cidr=CIDR, only={API.key}, existing={"nat": rl.TableState(part.chains["nat"])})
    assert shared(other.text) == shared(part.text) and other.deleted_chains == []
    assert rl.svc_chain(WEB) not in {ln[1:].split()[0] for ln in body(other.text, "nat") if ln.startswith(":")}


def test_partial_build_deletes_a_removed_service_and_keeps_one_without_endpoints_rejected():
    full = rl.build(ProxyState([WEB, API], {WEB.key: [A], API.key: [C]}))
    part = rl.build(ProxyState([API], {API.key: []}), only={WEB.key, API.key},
                    existing={"nat": rl.TableState(full.chains["nat"])})
    gone = {rl.svc_chain(WEB), rl.sep_chain(WEB, A), rl.ext_chain(WEB), rl.svc_chain(API), rl.sep_chain(API, C)}
    assert set(part.deleted_chains) == gone
    assert any('"ns/api has no endpoints"' in ln for ln in body(part.text, "filter"))


def test_nft_layout_lists_the_table_before_the_per_service_chains_when_there_are_many():
    ports = [ServicePort("ns", f"s{i}", "", "TCP", f"10.96.1.{i + 1}", 80) for i in range(300)]
    state = ProxyState(ports, {p.key: [A, B] for p in ports})
    text = rl.build(state, nft=True).text
    for t in ("nat", "filter"):
        lines = body(text, t)
        per_service = [i for i, ln in enumerate(lines) if ln.startswith(":KUBE-") and ln[1:].startswith(rl.PER_SERVICE)]
        hooks = [i for i, ln in enumerate(lines) if ln.startswith("-I ")]
        if t == "nat":
            assert lines.index("-S") < per_service[0]
            assert max(hooks) < lines.index("-S")  # the jumps to KUBE-SERVICES are known before
        else:
            assert "-S" not in lines  # three chains: no need
    # a small restore, and the legacy layout, never list
    assert "-S" not in rl.build(ProxyState([WEB], {WEB.key: [A]}), nft=True).text.splitlines()
    assert "-S" not in rl.build(state).text.splitlines()
    # the same rules either way
    assert sorted(rl.build(state, nft=True).text.splitlines()) == sorted(rl.build(state).text.splitlines() + ["-S"])


def test_conntrack_cleanups_for_udp_endpoint_changes():
    assert cleanups(None, ProxyState([DNS], {DNS.key: [A]})) == []  # a start knows no history
    first = cleanups(ProxyState([DNS], {DNS.key: []}), ProxyState([DNS], {DNS.key: [A]}))
    assert first == [["-D", "-p", "udp", "--orig-dst", "10.96.0.10"], ["-D", "-p", "udp", "--dport", "30053"]]
    moved = cleanups(ProxyState([DNS], {DNS.key: [A, B]}), ProxyState([DNS], {DNS.key: [B, C]}))
    assert moved == [["-D", "-p", "udp", "--orig-dst", "10.96.0.10", "--reply-src", A.ip],
                     ["-D", "-p", "udp", "--dport", "30053", "--reply-src", A.ip]]
    assert cleanups(ProxyState([DNS], {DNS.key: [A]}), ProxyState([], {})) == [
        ["-D", "-p", "udp", "--orig-dst", "10.96.0.10"]]
    # TCP flows end by themselves: nothing for them
    assert cleanups(ProxyState([WEB], {WEB.key: [A]}), ProxyState([WEB], {WEB.key: [B]})) == []


class Recorder:
    def __init__(self, answers: dict[str, Completed] | None = None, missing: tuple[str, ...] = ()):
        self.calls: list[tuple[list[str], str | None]] = []
        self.answers, self.missing = answers or {}, missing

    async def __call__(self, argv, *, stdin=None):
        self.calls.append((list(argv), stdin))
        if argv[0] in self.missing:
            raise FileNotFoundError(argv[0])
        return self.answers.get(argv[0], Completed(tuple(argv), 0, "", ""))

    def names(self) -> list[str]:
        return [" ".join(a[:2]) if a[0].endswith("-save") or a[0] == "conntrack" else " ".join(a) for a, _ in self.calls]


def test_backend_is_the_one_with_more_kube_rules_nft_on_a_tie():
    def saved(n):
        return Completed((), 0, "*nat\n" + "-A KUBE-SERVICES -j RETURN\n" * n + "COMMIT\n", "")
    legacy = Recorder({"iptables-nft-save": saved(1), "iptables-legacy-save": saved(5)})
    assert asyncio.run(detect_backend(legacy)) == ("iptables-legacy", False)
    tie = Recorder({"iptables-nft-save": saved(0), "iptables-legacy-save": saved(0)})
    assert asyncio.run(detect_backend(tie)) == ("iptables-nft", True)
    plain = Recorder({"iptables": Completed((), 0, "iptables v1.8.9 (nf_tables)\n", "")},
                     missing=("iptables-nft-save", "iptables-legacy-save"))
    assert asyncio.run(detect_backend(plain)) == ("iptables", True)


class _NoClient:
    def resource(self, name):
        return None


def _proxier(run) -> Proxier:
    from tests.unit.test_proxy_rules import eslice, svc
    p = Proxier(_NoClient(), ProxyConfig("n1", cluster_cidr=CIDR, sync_period=3600), run)
    p.iptables, p.nft = "iptables-nft", True
    p.services.store = {"ns/dns": svc("dns", "10.96.0.10", (("dns", 53, "UDP", 0),))}
    p.slices.store = {"ns/dns-a": eslice("dns-a", "dns", "dns", 5353, [("10.244.1.2", True, None)], "UDP")}
    p.services.synced.set()
    p.slices.synced.set()
    return p


def test_proxier_reads_the_save_once_then_partial_syncs_run_no_reads_and_full_ones_read_the_hooks():
    from tests.unit.test_proxy_rules import eslice

    async def go():
        run = Recorder()
        p = _proxier(run)
        await p.sync()  # first: the kernel's state is unknown
        assert run.names() == ["iptables-nft-save", "iptables-nft-restore --noflush"] and p.last.full
        run.calls.clear()
        p.slices.store["ns/dns-a"] = eslice("dns-a", "dns", "dns", 5353, [("10.244.1.9", True, None)], "UDP")
        p._slice_changed(p.slices.store["ns/dns-a"])
        await p.sync()  # partial: nothing read; the moved UDP endpoint's flows deleted
        assert run.names() == ["iptables-nft-restore --noflush", "conntrack -D"]
        assert not p.last.full and p.last.written == 1
        assert run.calls[1][0] == ["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.10",
                                   "--reply-src", "10.244.1.2"]
        run.calls.clear()
        await p.sync()  # nothing dirty: the periodic full resync, reading only the hooked built-ins
        reads = sorted(" ".join(a) for a, _ in run.calls[:-1])
        assert reads == sorted(f"iptables-nft -w -t {t} -S {b}" for t, b in
                               {("nat", "PREROUTING"), ("nat", "OUTPUT"), ("nat", "POSTROUTING"),
                                ("filter", "INPUT"), ("filter", "FORWARD"), ("filter", "OUTPUT")})
        assert run.calls[-1][0] == ["iptables-nft-restore", "--noflush"] and p.last.full
        # the hooks it read are missing (somebody flushed them): the restore inserts them again
        assert "-I PREROUTING " in run.calls[-1][1]
    asyncio.run(go())


def test_a_failed_restore_makes_the_next_sync_read_the_save_and_write_everything():
    async def go():
        run = Recorder()
        p = _proxier(run)
        await p.sync()
        run.answers["iptables-nft-restore"] = Completed((), 1, "", "line 3 failed")
        p._svc_changed(p.services.store["ns/dns"])
        try:
            await p.sync()
            raise AssertionError("no SyncError")
        except SyncError as e:
            assert "line 3 failed" in str(e)
        del run.answers["iptables-nft-restore"]
        run.calls.clear()
        await p.sync()
        assert run.names()[:2] == ["iptables-nft-save", "iptables-nft-restore --noflush"] and p.last.full
    asyncio.run(go())


def test_missing_conntrack_warns_once_and_sync_goes_on(capsys):
    async def go():
        run = Recorder(missing=("conntrack",))
        ct = Conntrack(run)
        await ct.clear([["-D", "-p", "udp", "--orig-dst", "10.96.0.10"]] * 3)
        await ct.clear([["-D", "-p", "udp", "--orig-dst", "10.96.0.11"]])
        assert ct.missing and len(run.calls) == 1
    asyncio.run(go())
    assert capsys.readouterr().out.count("no conntrack tool") == 1
