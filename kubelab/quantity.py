"""Resource quantities ("100m", "0.5", "64Mi", "1G", "129e6"), parsed as Kubernetes does.

Used by validation in the API server, the scheduler's fit checks and the kubelet's cgroup
limits; `cpu` is handled in millicores, everything else in whole units (bytes, pods).
"""
from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_SUFFIX = {
    "": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
_RE = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


class QuantityError(ValueError):
    pass


def parse(q: str) -> Decimal:
    m = _RE.match(q.strip()) if isinstance(q, str) else None
    if not m:
        raise QuantityError("quantities must match the regular expression "
                            "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
    try:
        return Decimal(m.group(1)) * Decimal(_SUFFIX[m.group(2) or ""])
    except InvalidOperation as e:
        raise QuantityError(str(e)) from None


def milli(q: str) -> int:
    """CPU as millicores, rounded up as Kubernetes rounds requests."""
    return math.ceil(parse(q) * 1000)


def value(q: str) -> int:
    return math.ceil(parse(q))


def amount(resource: str, q: str) -> int:
    """The scheduler's unit for a resource: millicores for cpu, whole units otherwise."""
    return milli(q) if resource == "cpu" else value(q)


def format_milli(m: int) -> str:
    return f"{m // 1000}" if m % 1000 == 0 else f"{m}m"


def format_bytes(b: int) -> str:
    for suf, mul in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if b % mul == 0 and b >= mul:
            return f"{b // mul}{suf}"
    return str(b)
