"""kubelab/lab/bin/busybox, the busybox first on `kubelab lab shell`'s PATH: `wget -T N` runs
as `timeout N wget` where the host's busybox lacks -T (Debian's, which segfaults on it), every
other command line goes to the real busybox untouched."""
from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import threading

import pytest

from kubelab.lab import vms
from kubelab.lab.state import VM, LabState, save

SHIM = vms.SHIM_DIR / "busybox"


def fake_busybox(tmp_path, has_timeout: bool):
    """A busybox that records its argv (and claims -T in wget's help if has_timeout)."""
    log = tmp_path / "argv"
    bb = tmp_path / "bb"
    help_line = "echo '	-T SEC		Network read timeout'" if has_timeout else "echo 'Usage: wget [-cqS]'"
    bb.write_text(f"""#!/bin/sh
if [ "$1" = wget ] && [ "$2" = --help ]; then {help_line} >&2; exit 1; fi
printf '%s\\n' "$*" >> {log}
""")
    bb.chmod(0o755)
    return bb, log


def shim(bb, *args):
    return subprocess.run([str(SHIM), *args], env=dict(os.environ, KUBELAB_BUSYBOX=str(bb)),
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("args, want", [
    (["wget", "-qO-", "-T", "3", "http://x/"], "timeout 3 {bb} wget -qO- http://x/"),
    (["wget", "-T5", "-q", "http://x/"], "timeout 5 {bb} wget -q http://x/"),
    (["wget", "--timeout=7", "http://x/"], "timeout 7 {bb} wget http://x/"),
    (["wget", "--timeout", "4", "-qO-", "http://x/"], "timeout 4 {bb} wget -qO- http://x/"),
    (["wget", "-qO-", "http://x/"], "wget -qO- http://x/"),
    (["ls", "-T", "1"], "ls -T 1"),
])
def test_wget_timeout_becomes_timeout(tmp_path, args, want):
    bb, log = fake_busybox(tmp_path, has_timeout=False)
    assert shim(bb, *args).returncode == 0
    assert log.read_text().splitlines() == [want.format(bb=bb)]


def test_a_busybox_with_wget_timeout_is_left_alone(tmp_path):
    bb, log = fake_busybox(tmp_path, has_timeout=True)
    assert shim(bb, "wget", "-qO-", "-T", "3", "http://x/").returncode == 0
    assert log.read_text().splitlines() == ["wget -qO- -T 3 http://x/"]


@pytest.fixture
def servers():
    """A loopback HTTP server that answers, and a listener that never does."""
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"from-loopback\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        yield httpd.server_address[1], silent.getsockname()[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        silent.close()


@pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="no /bin/busybox on this host")
def test_with_the_hosts_busybox(servers):
    good, silent = servers
    ok = subprocess.run([str(SHIM), "wget", "-qO-", "-T", "3", f"http://127.0.0.1:{good}/"],
                        capture_output=True, text=True, timeout=60, check=False)
    assert (ok.returncode, ok.stdout) == (0, "from-loopback\n"), ok.stderr
    # a server that never answers: -T ends it (with the timeout, a failure), no hang, no crash
    hung = subprocess.run([str(SHIM), "wget", "-qO-", "-T", "1", f"http://127.0.0.1:{silent}/"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert hung.returncode not in (0, -11, 139), hung  # 139/-11: the segfault the shim avoids
    assert subprocess.run([str(SHIM), "echo", "hi"], capture_output=True, text=True,
                          check=False).stdout == "hi\n"


def test_lab_shell_puts_the_shim_first(tmp_path):
    me = VM(name="p-worker1", role="worker", ip="192.168.9.11", veth="b-1", dir=str(tmp_path / "vm"),
            pid=os.getpid(), mnt_ns=vms.ns_id(os.getpid(), "mnt"))
    save(tmp_path, LabState(bridge="b", subnet="192.168.9.0/24", prefix="p", bridge_ip="192.168.9.1", vms=[me]))
    argv, env = vms.shell_argv(tmp_path, "worker1", ["busybox", "true"])
    path = env["PATH"].split(os.pathsep)
    assert path[0] == str(vms.SHIM_DIR) and argv[-2:] == ["busybox", "true"]
    assert shutil.which("busybox", path=env["PATH"]) == str(SHIM)
