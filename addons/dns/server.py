"""The cluster DNS server: DNS over UDP and TCP on one address (asyncio), answering from the
Zone (records.py) that informers on Services and EndpointSlices keep current.

dnspython parses queries and writes answers; this module only decides what to say. Names of
the cluster domain (and the reverse names of cluster IPs) are answered authoritatively (AA).
Any other name is REFUSED, or relayed to the `--upstream` resolvers when some are given (off
by default, as the tests keep it: nothing here sends a packet unless told where). A UDP
answer larger than the client's buffer (512 bytes, or its EDNS payload size) goes out empty
with TC set, so the client asks again over TCP.

Answers of the zone are cached whole, as wire bytes keyed by the query's bytes after its ID
(the same question, flags and EDNS options always get the same answer from the same zone),
until the zone's serial moves: a hit costs a dictionary lookup instead of a parse and a render
(CoreDNS's cache plugin plays this part). Forwarded answers are never cached.

The informer handlers update the zone directly instead of queueing keys: the zone is a pure
in-memory index (nothing can fail or block), the role the informer cache itself plays in
CoreDNS's kubernetes plugin.
"""
from __future__ import annotations

import asyncio
import logging
import struct
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from .records import RR, Answer, Zone

log = logging.getLogger("dns")

UDP_MIN = 512
TCP_IDLE = 10.0  # seconds a TCP client may stay silent before the connection is closed


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int = 53


def _rrsets(rrs: list[RR], qname: dns.name.Name, lowered: str) -> list[dns.rrset.RRset]:
    groups: dict[tuple[str, str], list[RR]] = {}
    for rr in rrs:
        groups.setdefault((rr.name, rr.rtype), []).append(rr)
    out = []
    for (name, rtype), group in groups.items():
        owner = qname if name == lowered else dns.name.from_text(name)  # the question's spelling
        out.append(dns.rrset.from_text_list(owner, group[0].ttl, dns.rdataclass.IN, rtype,
                                            [rr.data for rr in group]))
    return out


class DNSServer:
    def __init__(self, zone: Zone, *, host: str = "0.0.0.0", port: int = 53,
                 upstreams: tuple[Upstream, ...] = (), forward_timeout: float = 2.0, cache_size: int = 10000):
        self.zone, self.host, self.port = zone, host, port
        self.cache_size = cache_size
        self._cache: dict[tuple[bool, bytes], bytes] = {}
        self._cache_serial = zone.serial
        self.upstreams, self.forward_timeout = tuple(upstreams), forward_timeout
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.queries = 0

    # -- answering --
    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """The response to a parsed query, or None when it has to be forwarded."""
        self.queries += 1
        resp = dns.message.make_response(query)
        if self.upstreams:
            resp.flags |= dns.flags.RA
        if query.opcode() != dns.opcode.QUERY:
            resp.set_rcode(dns.rcode.NOTIMP)
            return resp
        if len(query.question) != 1:
            resp.set_rcode(dns.rcode.FORMERR)
            return resp
        q = query.question[0]
        lowered = q.name.to_text(omit_final_dot=True).lower()
        found: Answer | None = None
        if q.rdclass == dns.rdataclass.IN:
            found = self.zone.lookup(lowered, dns.rdatatype.to_text(q.rdtype))
        if found is None:
            if self.upstreams and q.rdclass == dns.rdataclass.IN:
                return None
            resp.set_rcode(dns.rcode.REFUSED)
            return resp
        resp.flags |= dns.flags.AA
        resp.set_rcode(dns.rcode.from_text(found.rcode))
        resp.answer = _rrsets(found.answer, q.name, lowered)
        resp.authority = _rrsets(found.authority, q.name, lowered)
        resp.additional = _rrsets(found.additional, q.name, lowered)
        return resp

    @staticmethod
    def parse(wire: bytes) -> dns.message.Message | bytes | None:
        """The query; or, for one dnspython cannot read, the FORMERR answer to send (None: drop)."""
        try:
            return dns.message.from_wire(wire)
        except dns.exception.DNSException:
            if len(wire) < 12:
                return None  # not even a header: nothing to answer to
            bad = dns.message.Message(id=struct.unpack("!H", wire[:2])[0])
            bad.flags = dns.flags.QR
            bad.set_rcode(dns.rcode.FORMERR)
            return bad.to_wire()

    def cached(self, wire: bytes, *, udp: bool) -> bytes | None:
        if self.zone.serial != self._cache_serial:  # the zone changed: every answer may have
            self._cache.clear()
            self._cache_serial = self.zone.serial
        hit = self._cache.get((udp, wire[2:]))
        if hit is not None:
            self.queries += 1
            return wire[:2] + hit  # the query's own ID
        return None

    def answer_wire(self, wire: bytes, *, udp: bool) -> bytes | None | dns.message.Message:
        """The zone's answer as wire bytes (cached), None for nothing to send, or the parsed
        query when it has to be forwarded."""
        hit = self.cached(wire, udp=udp)
        if hit is not None:
            return hit
        query = self.parse(wire)
        if not isinstance(query, dns.message.Message):
            return query
        resp = self.answer(query)
        if resp is None:
            return query
        out = self.finish(query, resp, udp=udp)
        if self.cache_size:
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[(udp, wire[2:])] = out[2:]
        return out

    async def respond(self, wire: bytes, *, udp: bool) -> bytes | None:
        """The answer's wire bytes for one message as received (None: nothing to send)."""
        out = self.answer_wire(wire, udp=udp)
        if not isinstance(out, dns.message.Message):
            return out
        return await self.forwarded(out, udp=udp)

    async def forwarded(self, query: dns.message.Message, *, udp: bool) -> bytes:
        return self.finish(query, await self.forward(query, udp=udp), udp=udp)

    @staticmethod
    def finish(query: dns.message.Message, resp: dns.message.Message, *, udp: bool) -> bytes:
        limit = max(UDP_MIN, query.payload if query.edns >= 0 else 0) if udp else 65535
        try:
            return resp.to_wire(max_size=limit)
        except dns.exception.TooBig:
            resp.answer, resp.authority, resp.additional = [], [], []
            resp.flags |= dns.flags.TC
            return resp.to_wire(max_size=limit)

    async def forward(self, query: dns.message.Message, *, udp: bool) -> dns.message.Message:
        import dns.asyncquery
        for up in self.upstreams:
            try:
                if udp:
                    r = await dns.asyncquery.udp(query, up.host, timeout=self.forward_timeout, port=up.port,
                                                 ignore_trailing=True)
                else:
                    r = await dns.asyncquery.tcp(query, up.host, timeout=self.forward_timeout, port=up.port)
                r.id = query.id
                return r
            except (dns.exception.DNSException, OSError) as e:
                log.warning("upstream %s:%d: %s", up.host, up.port, e)
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.RA
        resp.set_rcode(dns.rcode.SERVFAIL)
        return resp

    # -- transports --
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server = self

        class UDP(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                # answered in the callback, without a task: zone answers never wait on anything
                try:
                    out = server.answer_wire(data, udp=True)
                    if not isinstance(out, dns.message.Message):
                        if out is not None:
                            self.transport.sendto(out, addr)
                        return
                except Exception:
                    log.exception("answering %s", addr)
                    return
                task = asyncio.ensure_future(server.forwarded(out, udp=True))
                server._tasks.add(task)
                task.add_done_callback(lambda t: server._sent(t, self.transport, addr))

        any_port = self.port == 0
        for attempt in range(20 if any_port else 1):
            self._udp, _ = await loop.create_datagram_endpoint(UDP, local_addr=(self.host, self.port))
            port = self._udp.get_extra_info("sockname")[1]  # port 0: the one the kernel chose
            try:
                self._tcp = await asyncio.start_server(self._tcp_client, self.host, port)
                self.port = port
                return
            except OSError:
                self._udp.close()
                if not any_port or attempt == 19:
                    raise
            except BaseException:
                self._udp.close()
                raise

    def _sent(self, task: asyncio.Task, transport, addr) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        if task.exception() is not None:
            log.error("answering %s: %s", addr, task.exception())
            return
        wire = task.result()
        if wire is not None and not transport.is_closing():
            transport.sendto(wire, addr)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                # RFC 1035 4.2.2: each message is preceded by its length in two bytes
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                wire = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", head)[0]), TCP_IDLE)
                out = await self.respond(wire, udp=False)
                if out is None:
                    return
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()


async def serve(client, zone: Zone, server: DNSServer, *, sync_timeout: float = 5.0) -> None:
    """Feed the zone from informers on Services and EndpointSlices and answer until cancelled.
    Answers start once both informers have listed, or after sync_timeout (CoreDNS waits 5 s too,
    so a DNS pod never stays dark because the API server is slow)."""
    from kubelab.client.informer import Informer
    services = Informer(client.resource("services"))
    slices = Informer(client.resource("endpointslices"))
    services.add_handler(zone.upsert_service, lambda _old, new: zone.upsert_service(new), zone.delete_service)
    slices.add_handler(zone.upsert_slice, lambda _old, new: zone.upsert_slice(new), zone.delete_slice)
    tasks = [asyncio.create_task(services.run()), asyncio.create_task(slices.run())]
    try:
        try:
            await asyncio.wait_for(asyncio.gather(services.wait_synced(), slices.wait_synced()), sync_timeout)
            print(f"synced: {zone.stats()}", flush=True)
        except TimeoutError:
            print(f"starting before the informers synced ({sync_timeout:.0f}s): the API server is slow", flush=True)
        await server.start()
        print(f"serving {zone.domain} on {server.host}:{server.port} (udp, tcp)", flush=True)
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.stop()
