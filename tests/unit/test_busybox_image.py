"""The offline busybox image's layer: one applet link per applet, and where Debian's static
busybox has no `wget -T`, the wrapper that gives `wget -T N` its meaning (run here with the
host's own /bin/busybox against servers on loopback)."""
from __future__ import annotations

import http.server
import io
import socket
import subprocess
import tarfile
import threading

import pytest

from worker.runtime import busybox

pytestmark = pytest.mark.skipif(not busybox.BUSYBOX.exists(), reason="needs busybox-static")


def members() -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(busybox.layer_tar())) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_every_applet_is_in_the_image_once():
    m = members()
    assert m["bin/busybox"].isfile()
    for a in busybox.applets():
        assert f"bin/{a}" in m
    if busybox.wget_has_timeout():
        assert m["bin/wget"].issym()
    else:  # Debian's build: wget is the wrapper, a script
        assert m["bin/wget"].isfile() and m["bin/wget"].mode == 0o755


@pytest.fixture
def wrapper(tmp_path):
    path = tmp_path / "wget"
    path.write_text(busybox.WGET_WRAPPER)
    return ["/bin/busybox", "sh", str(path)]


@pytest.fixture
def web():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"from-loopback\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("flags", [["-T", "5"], ["-T5"], ["--timeout=5"], ["--timeout", "5"], []])
def test_wrapper_keeps_the_rest_of_the_command_line(wrapper, web, flags):
    p = subprocess.run([*wrapper, "-q", "-O", "-", *flags, web], capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stdout) == (0, "from-loopback\n"), p.stderr


def test_wrapper_gives_up_after_the_timeout(wrapper):
    # a server that accepts and never answers: without -T, wget would wait for good
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        p = subprocess.run([*wrapper, "-qO-", "-T", "1", f"http://127.0.0.1:{s.getsockname()[1]}/"],
                           capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and p.stdout == ""
