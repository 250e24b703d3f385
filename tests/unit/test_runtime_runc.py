"""worker/runtime/runc.py and proc.py: the listing survives a container deleted while runc
lists, other errors surface, and command errors name the subcommand, not a global flag."""
from __future__ import annotations

import pytest

from worker.runtime.proc import CommandError
from worker.runtime.runc import Runc


def fake_runc(tmp_path, fail_times: int, err: str):
    """A runc stand-in whose `list` fails fail_times times with err, then lists one container."""
    count = tmp_path / "count"
    count.write_text("0")
    script = tmp_path / "runc"
    script.write_text(f"""#!/bin/sh
n=$(cat {count}); echo $((n + 1)) > {count}
if [ "$n" -lt {fail_times} ]; then echo '{err}' >&2; exit 1; fi
echo '[{{"id": "c1", "status": "running"}}]'
""")
    script.chmod(0o755)
    (tmp_path / "root").mkdir()
    return Runc(tmp_path / "root", binary=str(script)), count


async def test_list_retries_a_container_deleted_while_listing(tmp_path):
    runc, count = fake_runc(tmp_path, 2, "stat /run/x/abc: no such file or directory")
    assert list(await runc.list()) == ["c1"]
    assert count.read_text().strip() == "3"


async def test_list_reports_other_errors_at_once(tmp_path):
    runc, count = fake_runc(tmp_path, 1, "permission denied")
    with pytest.raises(CommandError, match=r"^runc list failed \(exit 1\): permission denied"):
        await runc.list()
    assert count.read_text().strip() == "1"


def test_command_error_names_the_subcommand():
    assert str(CommandError(["runc", "--root", "/r", "delete", "x"], 1, "gone")).startswith("runc delete failed")
    assert str(CommandError(["skopeo", "copy", "a", "b"], 1, "no")).startswith("skopeo copy failed")
