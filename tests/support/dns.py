"""A small authoritative DNS server on a loopback port, answering from a dict (UDP and TCP).

Records are keyed by (name, type) and given as zone-file rdata text::

    {("example.org", "MX"): ["10 mx.example.org."],
     ("example.org", "TXT"): ['"v=spf1 mx -all"']}

The dict is read at each query, so a test may change it while the server runs.
A name with no records at all is NXDOMAIN; a known name without the type asked
for is an empty NOERROR answer. Answers too big for the client's UDP size are
truncated, and the client retries over TCP on the same port, as resolvers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Records = dict[tuple[str, str], list[str]]
TTL = 60
UDP_DEFAULT = 512  # a client without EDNS takes no more over UDP


@dataclass
class DnsServer:
    """The zone data and where the server listens."""

    records: Records = field(default_factory=dict)
    port: int = 0

    def resolver(self) -> dns.asyncresolver.Resolver:
        """A resolver that asks only this server, quickly."""
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        resolver.timeout = resolver.lifetime = 2.0
        return resolver

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        """The authoritative response to a query."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        for question in query.question:
            rrset = self._rrset(question.name, question.rdtype)
            if rrset is not None:
                response.answer.append(rrset)
            elif not self._known(question.name):
                response.set_rcode(dns.rcode.NXDOMAIN)
        return response

    def _entries(self) -> list[tuple[dns.name.Name, dns.rdatatype.RdataType, list[str]]]:
        return [
            (dns.name.from_text(name), dns.rdatatype.from_text(kind), texts)
            for (name, kind), texts in self.records.items()
        ]

    def _rrset(self, name: dns.name.Name, kind: dns.rdatatype.RdataType) -> dns.rrset.RRset | None:
        for owner, rdtype, texts in self._entries():
            if owner == name and rdtype == kind and texts:
                return dns.rrset.from_text_list(name, TTL, dns.rdataclass.IN, kind, texts)
        return None

    def _known(self, name: dns.name.Name) -> bool:
        return any(owner == name and texts for owner, _, texts in self._entries())


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return  # not a query: nothing to answer
        response = self.server.answer(query)
        limit = max(query.payload, UDP_DEFAULT) if query.edns >= 0 else UDP_DEFAULT
        try:
            wire = response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC
            wire = response.to_wire()
        assert self.transport is not None
        self.transport.sendto(wire, addr)


async def _tcp(
    server: DnsServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One TCP connection: length-prefixed queries until the client closes."""
    try:
        while True:
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            query = dns.message.from_wire(await reader.readexactly(size))
            wire = server.answer(query).to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, dns.exception.DNSException):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def dns_server(records: Records | None = None) -> AsyncIterator[DnsServer]:
    """Serve records on 127.0.0.1, UDP and TCP on one free port, in this event loop."""
    server = DnsServer(dict(records or {}))
    loop = asyncio.get_running_loop()
    for _ in range(20):  # a free UDP port whose TCP twin is free too
        udp, _protocol = await loop.create_datagram_endpoint(
            lambda: _Udp(server), local_addr=("127.0.0.1", 0), family=socket.AF_INET
        )
        server.port = udp.get_extra_info("sockname")[1]
        try:
            tcp = await asyncio.start_server(
                lambda r, w: _tcp(server, r, w), "127.0.0.1", server.port
            )
        except OSError:
            udp.close()
            continue
        break
    else:  # pragma: no cover - twenty taken TCP twins in a row
        raise RuntimeError("no free port for the test DNS server")
    try:
        yield server
    finally:
        udp.close()
        tcp.close()
        await tcp.wait_closed()
