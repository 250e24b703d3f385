"""The probe `net trace` sends, run inside the source pod's network namespace (a new process
there: this file's PROGRAM through the same Python, which a lab VM shares with the host). A
TCP connect or a UDP datagram from a bound socket, so the source port is known for the
conntrack lookup afterwards, or one ICMP echo through busybox ping. Its result is one JSON
line: ok (True, False, or None when UDP cannot tell), the local address, the error, the time.
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass

from kubelab.net.node import Node

TIMEOUT = 3.0

PROGRAM = r"""
import json, socket, sys, time
mode, ip, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM)
s.settimeout(timeout)
s.bind(("0.0.0.0", 0))
r = {"ok": False, "sport": s.getsockname()[1], "error": ""}
t0 = time.monotonic()
try:
    s.connect((ip, port))
    if mode == "udp":
        s.send(b"kubelab net trace\n")
        try:
            s.recv(512)
            r["ok"] = True
        except socket.timeout:
            r["ok"], r["error"] = None, "no answer (UDP: arrival is judged by the counters)"
    else:
        r["ok"] = True
except ConnectionRefusedError:
    r["error"] = "connection refused"
except socket.timeout:
    r["error"] = "timed out after %gs" % timeout
except OSError as e:
    r["error"] = e.strerror or str(e)
r["ms"] = round((time.monotonic() - t0) * 1000, 2)
print(json.dumps(r))
"""


@dataclass
class Result:
    mode: str         # tcp | udp | icmp
    ok: bool | None
    sport: str = ""
    error: str = ""
    ms: float = 0.0

    @property
    def refused(self) -> bool:
        return self.error == "connection refused"


def send(node: Node, netns: str, mode: str, ip: str, port: int, timeout: float = TIMEOUT) -> Result:
    if mode == "icmp":
        ping = ["busybox", "ping"] if shutil.which("busybox") else ["ping"]
        p = node.run([*ping, "-c", "1", "-W", str(int(timeout)), ip], netns, timeout=timeout + 10)
        ms = 0.0
        for word in p.stdout.split():
            if word.startswith("time="):
                try:
                    ms = float(word[5:])
                except ValueError:
                    pass
        err = "" if p.returncode == 0 else ("no echo reply" if p.returncode == 1 else (p.stderr or p.stdout).strip())
        return Result("icmp", p.returncode == 0, error=err, ms=ms)
    p = node.run([sys.executable, "-c", PROGRAM, mode, ip, str(port), str(timeout)], netns, timeout=timeout + 10)
    try:
        r = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Result(mode, False, error=f"the probe did not run: {(p.stderr or p.stdout).strip()[-300:]}")
    return Result(mode, r.get("ok"), str(r.get("sport", "")), r.get("error", ""), r.get("ms", 0.0))
