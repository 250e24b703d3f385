"""Container log files in the CRI format (conmon writes them, logs.py reads and rotates them):
reading with tail and follow (across a rotation), P fragments joined or ended without a
newline, and how rotate_files moves the files along."""
import asyncio
from pathlib import Path

from worker.runtime.logs import needs_rotation, parse_line, read_log, read_log_entries, rotate_files

TS = "2026-12-01T09:00:00.{:09d}+00:00"


def write(path: Path, *entries: tuple[str, str, str], start: int = 0) -> None:
    """Append (stream, tag, content) entries as conmon writes them."""
    with open(path, "ab") as f:
        for n, (stream, tag, content) in enumerate(entries, start):
            f.write(f"{TS.format(n)} {stream} {tag} {content}\n".encode())


async def _lines(path, **kw):
    return [x async for x in read_log(path, **kw)]


async def test_lines_partials_and_streams(tmp_path):
    log = tmp_path / "0.log"
    write(log, ("stdout", "F", "one"), ("stdout", "P", "tw"), ("stderr", "F", "err"), ("stdout", "F", "o"),
          ("stdout", "F", "three"))
    assert parse_line(log.read_bytes().splitlines()[1])[1:] == ("stdout", "P", "tw")
    assert await _lines(log) == ["one", "err", "two", "three"]
    assert await _lines(log, tail=2) == ["two", "three"]
    assert await _lines(log, tail=0) == []
    entries = [e async for e in read_log_entries(log)]
    assert entries[1].stream == "stderr"
    assert entries[2].time == TS.format(1)  # a joined line is as old as its first fragment


async def test_last_fragment_without_newline_ends_the_output(tmp_path):
    # conmon writes what it read as a P entry when no newline came; nothing ends it later
    log = tmp_path / "0.log"
    write(log, ("stdout", "F", "hello"), ("stdout", "P", "no "), ("stderr", "F", "oops"), ("stdout", "P", "newline"))
    assert await _lines(log) == ["hello", "oops", "no newline"]
    assert await _lines(log, tail=1) == ["no newline"]
    assert await asyncio.wait_for(_lines(log, follow=True, stop=lambda: True, poll=0.01), 10) == \
        ["hello", "oops", "no newline"]


def test_rotate_files_keeps_max_files(tmp_path):
    log = tmp_path / "0.log"
    for gen in range(4):
        write(log, ("stdout", "F", f"generation {gen}"))
        rotate_files(log, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.log.1", "0.log.2"]
    assert (tmp_path / "0.log.1").read_text().endswith("generation 3\n")
    assert (tmp_path / "0.log.2").read_text().endswith("generation 2\n")
    write(log, ("stdout", "F", "x"))
    rotate_files(log, 1)  # one file in all: the live one goes
    assert not log.exists() and (tmp_path / "0.log.1").exists()


def test_needs_rotation(tmp_path):
    log = tmp_path / "0.log"
    assert not needs_rotation(log, 10)
    log.write_bytes(b"x" * 10)
    assert not needs_rotation(log, 10)
    log.write_bytes(b"x" * 11)
    assert needs_rotation(log, 10)


async def test_follow_across_rotation_until_stopped(tmp_path):
    path = tmp_path / "0.log"
    done = False

    async def writer():
        nonlocal done
        for i in range(12):
            write(path, ("stdout", "F", f"msg {i}"), start=i)
            if i % 4 == 3:
                rotate_files(path, 2)  # what conmon does next, on the runtime's word: a new file
            await asyncio.sleep(0.02)
        done = True

    w = asyncio.create_task(writer())
    got = await asyncio.wait_for(_lines(path, follow=True, stop=lambda: done, poll=0.01), 10)
    await w
    assert got == [f"msg {i}" for i in range(12)]


async def test_missing_file(tmp_path):
    assert await _lines(tmp_path / "none.log") == []
