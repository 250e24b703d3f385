"""The runtime's exit record, made from conmon's exit file the first time it is seen (no
containers run here: the container directory is written by hand)."""
import json

from worker.runtime.images import ImageStore
from worker.runtime.runtime import Runtime

CID = "ef" * 32


def _runtime(tmp_path) -> Runtime:
    rt = Runtime(tmp_path / "node", runc_root=tmp_path / "runc", images=ImageStore(tmp_path / "images"))
    cdir = rt.containers_dir / CID
    (cdir / "exits").mkdir(parents=True)
    # a cgroup that does not exist: no OOM kills to be read
    (cdir / "meta.json").write_text(json.dumps({"cgroup_path": "/kubelab-unit-test-none/x"}))
    return rt


def test_exit_file_becomes_the_record(tmp_path):
    rt = _runtime(tmp_path)
    assert rt._exit(CID) is None  # running: no exit file yet
    exit_file = rt.containers_dir / CID / "exits" / CID
    exit_file.write_text("3")
    rec = rt._exit(CID)
    assert (rec["exit_code"], rec["reason"], rec["oom_kills"], rec["lost"]) == (3, "Error", 0, False)
    assert rec["finished_at"] == exit_file.stat().st_mtime  # when conmon wrote it
    assert json.loads((rt.containers_dir / CID / "exit.json").read_text()) == rec
    exit_file.write_text("0")
    assert rt._exit(CID)["exit_code"] == 3  # the first look is the record


def test_completed_and_lost(tmp_path):
    rt = _runtime(tmp_path)
    (rt.containers_dir / CID / "exits" / CID).write_text("0")
    assert rt._exit(CID)["reason"] == "Completed"
    (rt.containers_dir / CID / "exit.json").unlink()
    (rt.containers_dir / CID / "exits" / CID).write_text("-1")  # conmon had no status to give
    rec = rt._exit(CID)
    assert (rec["exit_code"], rec["reason"], rec["lost"]) == (255, "Error", True)


def test_removed_container_has_no_record(tmp_path):
    rt = _runtime(tmp_path)
    (rt.containers_dir / CID / "exits" / CID).write_text("0")
    (rt.containers_dir / CID / "meta.json").unlink()  # removed between the two reads
    assert rt._exit(CID) is None
