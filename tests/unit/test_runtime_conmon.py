"""How the runtime talks to conmon without running it: the sync pipe's messages, the exit
file, and which processes `kubelab reset` may take for kubelab's conmons."""
import os
import time
from pathlib import Path

import pytest

from worker.runtime import conmon

CID = "ab" * 32


def test_sync_pipe_messages():
    def read(data: bytes):
        r, w = os.pipe()
        os.write(w, data)
        os.close(w)
        try:
            return conmon._read_sync(r, 5)
        finally:
            os.close(r)

    assert read(b'{"data": 4242}\n') == {"data": 4242}
    assert read(b'{"data": -1, "message": "exec: \\"nosuch\\": not found"}\n')["message"] == 'exec: "nosuch": not found'
    assert read(b'{"data": 7}') == {"data": 7}  # the line ended by conmon's exit, not a newline
    assert read(b"") is None  # conmon died before reporting
    with pytest.raises(conmon.ConmonError, match="sync pipe"):
        read(b"garbage\n")


def test_sync_pipe_timeout():
    r, w = os.pipe()
    try:
        with pytest.raises(conmon.ConmonError, match="reported nothing"):
            conmon._read_sync(r, 0.05)
    finally:
        os.close(r)
        os.close(w)


def test_exit_file(tmp_path):
    p = conmon.Paths(tmp_path, CID)
    assert conmon.exit_code(p) is None
    p.exit_dir.mkdir()
    p.exit_file.write_text("137")
    assert conmon.exit_code(p)[0] == 137
    p.exit_file.write_text("-1")  # conmon's "no status" (its --timeout)
    assert conmon.exit_code(p)[0] == -1
    p.exit_file.write_text("not a number")  # unreadable: as lost as conmon's -1
    assert conmon.exit_code(p)[0] == -1


def test_reset_recognises_kubelab_conmons():
    ours = conmon.argv("/usr/bin/conmon", conmon.Paths(Path("/var/lib/kubelab/containers") / CID, CID),
                       runc="/usr/sbin/runc", runc_root=Path("/run/kubelab/runc"),
                       log_path=Path("/var/log/pods/x/0.log"), name="k8s_web")
    assert conmon.is_kubelab_conmon(b"\0".join(a.encode() for a in ours) + b"\0")
    crio = [b"/usr/bin/conmon", b"-b", b"/run/containers/storage/overlay-containers/" + CID.encode() + b"/userdata",
            b"-c", CID.encode()]
    assert not conmon.is_kubelab_conmon(b"\0".join(crio))
    other_id = [b"/usr/bin/conmon", b"-b", b"/var/lib/kubelab/containers/" + CID.encode(), b"-c", b"cd" * 32]
    assert not conmon.is_kubelab_conmon(b"\0".join(other_id))
    not_conmon = [b"sleep", b"-b", b"/var/lib/kubelab/containers/" + CID.encode(), b"-c", CID.encode()]
    assert not conmon.is_kubelab_conmon(b"\0".join(not_conmon))


def test_stdin_and_tty_flags():
    """stdin: -i, and --leave-stdin-open unless stdinOnce (an attached client's close must not
    end the container's stdin then); tty: -t. reset still knows such a conmon."""
    def flags(**kw):
        args = conmon.argv("/usr/bin/conmon", conmon.Paths(Path("/var/lib/kubelab/containers") / CID, CID),
                           runc="/usr/sbin/runc", runc_root=Path("/run/kubelab/runc"),
                           log_path=Path("/var/log/pods/x/0.log"), name="k8s_web", **kw)
        assert conmon.is_kubelab_conmon(b"\0".join(a.encode() for a in args))
        return {a for a in args if a in ("-i", "--leave-stdin-open", "-t")}
    assert flags() == set()
    assert flags(stdin=True) == {"-i", "--leave-stdin-open"}
    assert flags(stdin=True, stdin_once=True) == {"-i"}
    assert flags(stdin_once=True) == set()  # stdinOnce without stdin means nothing
    assert flags(tty=True) == {"-t"}


def test_alive_is_only_this_containers_conmon():
    """A pid counts as the container's conmon only if its argv is conmon's with this id (pids
    are recycled). Stand-ins: Python processes named conmon (argv[0]) or not."""
    import subprocess
    import sys
    assert not conmon.alive(None, CID)
    assert not conmon.alive(os.getpid(), CID)
    code = "import time; time.sleep(1000)"
    named = subprocess.Popen(["conmon", "-c", code, CID], executable=sys.executable)
    other = subprocess.Popen(["python3", "-c", code, CID], executable=sys.executable)
    try:
        assert conmon.alive(named.pid, CID)
        assert not conmon.alive(named.pid, "cd" * 32)  # another container's conmon
        assert not conmon.alive(other.pid, CID)  # not a conmon
    finally:
        for p in (named, other):
            p.kill()
            p.wait()
    assert not conmon.alive(named.pid, CID)  # gone
    zombie = subprocess.Popen(["conmon", "-c", "pass", CID], executable=sys.executable)
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the stand-in never exited"
            time.sleep(0.01)
        assert not conmon.alive(zombie.pid, CID)  # exited, not reaped yet
    finally:
        zombie.wait()
