"""The DNS server's decisions without sockets (addons/dns/server.py): flags and rcodes,
truncation, and the answer cache, on wire bytes made and read by dnspython."""
from __future__ import annotations

import asyncio

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype

from addons.dns.records import Zone
from addons.dns.server import DNSServer

from .test_dns_records import endpoint_slice, service


def ask(srv: DNSServer, name: str, rdtype: str = "A", *, qid: int = 7, udp: bool = True,
        payload: int | None = None) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=payload is not None, payload=payload or 512)
    q.id = qid
    return dns.message.from_wire(asyncio.run(srv.respond(q.to_wire(), udp=udp)))


def test_zone_answers_are_authoritative_and_keep_the_question_spelling():
    z = Zone()
    z.upsert_service(service("web"))
    r = ask(DNSServer(z), "Web.Default.svc.cluster.local.")
    assert r.flags & dns.flags.AA and not r.flags & dns.flags.RA
    assert r.answer[0].name.to_text() == "Web.Default.svc.cluster.local."
    assert [x.to_text() for x in r.answer[0]] == ["10.96.0.20"]


def test_outside_names_refused_and_other_opcodes_not_implemented():
    srv = DNSServer(Zone())
    assert ask(srv, "example.com.").rcode() == dns.rcode.REFUSED
    q = dns.message.make_query("cluster.local.", "SOA")
    q.set_opcode(dns.opcode.NOTIFY)
    assert dns.message.from_wire(asyncio.run(srv.respond(q.to_wire(), udp=True))).rcode() == dns.rcode.NOTIMP


def test_udp_truncates_to_the_clients_buffer_tcp_does_not():
    z = Zone()
    z.upsert_service(service("big", ip="None"))
    z.upsert_slice(endpoint_slice("big", endpoints=[(f"10.244.1.{i}", True, "") for i in range(1, 61)]))
    srv = DNSServer(z)
    small = ask(srv, "big.default.svc.cluster.local.")
    assert small.flags & dns.flags.TC and small.answer == []
    assert len(ask(srv, "big.default.svc.cluster.local.", payload=4096).answer[0]) == 60  # EDNS: a bigger buffer
    assert len(ask(srv, "big.default.svc.cluster.local.", udp=False).answer[0]) == 60


def test_cached_answer_carries_each_querys_id_and_goes_when_the_zone_changes():
    z = Zone()
    z.upsert_service(service("web"))
    srv = DNSServer(z)
    assert ask(srv, "web.default.svc.cluster.local.", qid=1).id == 1
    again = ask(srv, "web.default.svc.cluster.local.", qid=2)  # from the cache
    assert again.id == 2 and [x.to_text() for x in again.answer[0]] == ["10.96.0.20"]
    z.upsert_service(service("web", ip="10.96.0.30"))
    assert [x.to_text() for x in ask(srv, "web.default.svc.cluster.local.", qid=3).answer[0]] == ["10.96.0.30"]


def test_no_cache():
    z = Zone()
    srv = DNSServer(z, cache_size=0)
    ask(srv, "10-1-2-3.default.pod.cluster.local.")
    assert srv._cache == {}


def test_several_questions_are_a_format_error():
    q = dns.message.make_query("a.cluster.local.", "A")
    q.question.append(dns.message.make_query("b.cluster.local.", "A").question[0])
    out = asyncio.run(DNSServer(Zone()).respond(q.to_wire(), udp=True))
    assert dns.message.from_wire(out).rcode() == dns.rcode.FORMERR


def test_srv_answer_has_the_targets_in_additional():
    z = Zone()
    s = service("dns", ports=(("dns", "UDP", 53),))
    z.upsert_service(s)
    r = ask(DNSServer(z), "_dns._udp.dns.default.svc.cluster.local.", "SRV")
    assert [(a.name.to_text(), a.rdtype) for a in r.additional] == [("dns.default.svc.cluster.local.",
                                                                     dns.rdatatype.A)]
