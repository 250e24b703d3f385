"""Container log files in the CRI format: writing, rotating by size, reading with tail and
follow (across a rotation)."""
import asyncio

from worker.runtime.logs import MAX_LINE, RotatingLog, parse_line, read_log, read_log_entries


async def _lines(path, **kw):
    return [x async for x in read_log(path, **kw)]


async def test_lines_partials_and_streams(tmp_path):
    log = RotatingLog(tmp_path / "0.log")
    log.write("stdout", b"one\ntw")
    log.write("stderr", b"err\n")
    log.write("stdout", b"o\nthree")
    log.close()
    raw = (tmp_path / "0.log").read_bytes().splitlines()
    assert [parse_line(r)[1:] for r in raw] == [("stdout", "F", "one"), ("stderr", "F", "err"),
                                               ("stdout", "F", "two"), ("stdout", "F", "three")]
    assert await _lines(tmp_path / "0.log") == ["one", "err", "two", "three"]
    assert await _lines(tmp_path / "0.log", tail=2) == ["two", "three"]
    assert await _lines(tmp_path / "0.log", tail=0) == []
    entries = [e async for e in read_log_entries(tmp_path / "0.log")]
    assert entries[1].stream == "stderr" and entries[0].time.endswith("Z")


async def test_long_lines_are_split_and_joined(tmp_path):
    log = RotatingLog(tmp_path / "0.log")
    long = b"x" * (MAX_LINE * 2 + 10)
    log.write("stdout", long + b"\n")
    log.close()
    tags = [parse_line(r)[2] for r in (tmp_path / "0.log").read_bytes().splitlines()]
    assert tags == ["P", "P", "F"]
    assert await _lines(tmp_path / "0.log") == [long.decode()]


def test_rotation_keeps_max_files(tmp_path):
    log = RotatingLog(tmp_path / "0.log", max_size=200, max_files=3)
    for i in range(50):
        log.write("stdout", f"line {i:02d}\n".encode())
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["0.log", "0.log.1", "0.log.2"]
    assert all(p.stat().st_size <= 200 for p in tmp_path.iterdir())
    newest = (tmp_path / "0.log").read_text().splitlines()[-1]
    assert newest.endswith("line 49")
    older = (tmp_path / "0.log.1").read_text().splitlines()[-1]
    assert int(older.split()[-1]) < 49


async def test_follow_across_rotation_until_stopped(tmp_path):
    path = tmp_path / "0.log"
    log = RotatingLog(path, max_size=150, max_files=2)
    done = False

    async def writer():
        nonlocal done
        for i in range(12):
            log.write("stdout", f"msg {i}\n".encode())
            await asyncio.sleep(0.02)
        log.close()
        done = True

    w = asyncio.create_task(writer())
    got = await asyncio.wait_for(_lines(path, follow=True, stop=lambda: done, poll=0.01), 10)
    await w
    assert got == [f"msg {i}" for i in range(12)]


async def test_missing_file(tmp_path):
    assert await _lines(tmp_path / "none.log") == []
