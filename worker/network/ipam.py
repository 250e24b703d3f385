"""Pod address management on one node, in the manner of CNI's host-local IPAM plugin.

The node's podCIDR (node.spec.podCIDR, a /24 of the cluster CIDR given by the controller
manager) is split as: the first host address (.1) is the gateway, held by the node bridge;
the rest up to the broadcast address (.2-.254 of a /24) go to pod sandboxes.

State is one file per allocated address, named by the address and holding the owner (the
sandbox id), so allocations survive kubelet restarts and can be read with `ls` and `cat`.
A file is claimed by creating it exclusively, so two IPAM objects (or two processes) on one
directory never hand out the same address. Addresses are handed out round-robin after the
last one reserved, as host-local does, so a freed address is not reused at once (an old
endpoint or ARP entry pointing at it has time to go).
"""
from __future__ import annotations

import ipaddress
import os
import time
import uuid
from pathlib import Path
from typing import Iterable

from worker.network.errors import AddressExhausted

LAST_RESERVED = "last_reserved"
_CLAIM_PREFIX = ".claim-"
_STALE_CLAIM_SECONDS = 60.0


class IPAM:
    def __init__(self, state_dir: Path, subnet: str):
        net = ipaddress.ip_network(subnet, strict=True)
        if net.version != 4:
            raise ValueError(f"pod CIDR {subnet}: only IPv4 is supported")
        if net.prefixlen > 30:
            raise ValueError(f"pod CIDR {subnet}: too small, needs a gateway and at least one pod address")
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.subnet = net
        self.gateway = net.network_address + 1
        self.first = net.network_address + 2
        self.last = net.broadcast_address - 1

    @property
    def size(self) -> int:
        """How many pod addresses the subnet holds (253 for a /24)."""
        return int(self.last) - int(self.first) + 1

    def in_range(self, ip: ipaddress.IPv4Address) -> bool:
        return self.first <= ip <= self.last

    # --- reading the state -------------------------------------------------------------------

    def _records(self) -> dict[ipaddress.IPv4Address, str]:
        return _read_records(self.dir)

    def allocations(self) -> dict[str, str]:
        """address -> owner for the current subnet (allocations of an old podCIDR are ignored)."""
        return {str(ip): owner for ip, owner in sorted(self._records().items()) if self.in_range(ip)}

    def lookup(self, owner: str) -> str | None:
        """The owner's address in the current subnet, if it has one."""
        mine = sorted(ip for ip, o in self._records().items() if o == owner and self.in_range(ip))
        return str(mine[0]) if mine else None

    # --- changing it -------------------------------------------------------------------------

    def allocate(self, owner: str) -> str:
        """Give owner an address; the same owner asking again gets the same address back."""
        _check_owner(owner)
        records = self._records()
        mine = sorted(ip for ip, o in records.items() if o == owner and self.in_range(ip))
        for ip, o in records.items():
            if o == owner and not self.in_range(ip):
                self._remove(ip)  # left from an old podCIDR: that address is meaningless now
        if mine:
            return str(mine[0])
        for ip in self._candidates():
            if ip in records:
                continue
            try:
                self._claim(ip, owner)
            except FileExistsError:
                continue  # another allocator took it since we listed
            return str(self._settle(ip, owner))
        raise AddressExhausted(
            f"no free pod address in {self.subnet} for {owner!r}: all {self.size} addresses "
            f"({self.first} - {self.last}) are allocated")

    def release(self, owner: str) -> list[str]:
        """Free every address the owner holds (in any subnet); returns them. Idempotent."""
        return self.release_in(self.dir, owner)

    @staticmethod
    def release_in(state_dir: Path, owner: str) -> list[str]:
        """release() for a directory whose subnet is not known (no podCIDR yet after a restart)."""
        freed = sorted(ip for ip, o in _read_records(Path(state_dir)).items() if o == owner)
        for ip in freed:
            _remove(Path(state_dir), ip)
        return [str(ip) for ip in freed]

    def gc(self, live_owners: Iterable[str]) -> list[str]:
        """Free the addresses of owners that are no longer alive, and every allocation of an old
        podCIDR; returns the freed addresses. The kubelet's housekeeping calls this."""
        live = set(live_owners)
        freed = [ip for ip, o in self._records().items() if o not in live or not self.in_range(ip)]
        for ip in freed:
            self._remove(ip)
        now = time.time()
        for entry in os.scandir(self.dir):
            if entry.name.startswith(_CLAIM_PREFIX):
                try:
                    if now - entry.stat().st_mtime > _STALE_CLAIM_SECONDS:
                        os.unlink(entry.path)  # left by an allocator that died mid-claim
                except FileNotFoundError:
                    pass
        return [str(ip) for ip in sorted(freed)]

    # --- internals ---------------------------------------------------------------------------

    def _candidates(self) -> Iterable[ipaddress.IPv4Address]:
        """Every pod address once, starting after the last one reserved."""
        start = self.first
        try:
            last = ipaddress.IPv4Address((self.dir / LAST_RESERVED).read_text().strip())
            if self.in_range(last) and last < self.last:
                start = last + 1
        except (FileNotFoundError, ValueError):
            pass
        n, offset = self.size, int(start) - int(self.first)
        for i in range(n):
            yield self.first + (offset + i) % n

    def _claim(self, ip: ipaddress.IPv4Address, owner: str) -> None:
        # The owner is written to a private file created with O_CREAT|O_EXCL, then hard-linked to
        # the address's name: link() fails if the name exists, so exactly one claimer wins, and
        # nobody ever sees an address file without its owner in it.
        tmp = self.dir / f"{_CLAIM_PREFIX}{ip}-{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, f"{owner}\n".encode())
        finally:
            os.close(fd)
        try:
            os.link(tmp, self.dir / str(ip))
        finally:
            os.unlink(tmp)
        _write_atomic(self.dir / LAST_RESERVED, f"{ip}\n")

    def _settle(self, claimed: ipaddress.IPv4Address, owner: str) -> ipaddress.IPv4Address:
        """Two allocators racing for the same owner may both claim an address; both then agree
        on the lowest one, and the other claim is dropped by whoever made it."""
        mine = sorted(ip for ip, o in self._records().items() if o == owner and self.in_range(ip))
        if mine and mine[0] != claimed:
            self._remove(claimed)
            return mine[0]
        return claimed

    def _remove(self, ip: ipaddress.IPv4Address) -> None:
        _remove(self.dir, ip)


def _read_records(state_dir: Path) -> dict[ipaddress.IPv4Address, str]:
    """Every allocation file, of the current subnet or not, as address -> owner."""
    out: dict[ipaddress.IPv4Address, str] = {}
    try:
        entries = list(os.scandir(state_dir))
    except FileNotFoundError:
        return out
    for entry in entries:
        try:
            ip = ipaddress.IPv4Address(entry.name)
        except ValueError:
            continue  # last_reserved, claims in progress, anything else
        try:
            out[ip] = Path(entry.path).read_text().strip()
        except FileNotFoundError:
            continue  # released while we listed
    return out


def _remove(state_dir: Path, ip: ipaddress.IPv4Address) -> None:
    try:
        os.unlink(state_dir / str(ip))
    except FileNotFoundError:
        pass


def _check_owner(owner: str) -> None:
    if not owner or owner != owner.strip() or "\n" in owner:
        raise ValueError(f"IPAM owner {owner!r}: must be a non-empty single line without surrounding spaces")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{_CLAIM_PREFIX}{path.name}-{uuid.uuid4().hex}")  # gc() sweeps leftovers
    tmp.write_text(text)
    os.replace(tmp, path)
