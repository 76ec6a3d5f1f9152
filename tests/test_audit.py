"""The hash-chained audit log: concurrent appends keep one valid chain, and every edit,
reordering, deletion or torn line is reported at the right line."""

import json
import multiprocessing
import os
import threading
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloudvmi.cli.remote_admin import COMMANDS
from cloudvmi.remote import audit
from cloudvmi.remote.audit import GENESIS, AuditError, AuditLog, args_digest, verify


def fill(path: Path, n: int = 100, threads: int = 4) -> AuditLog:
    log = AuditLog(path)

    def work(t: int) -> None:
        for i in range(n // threads):
            log.record(f"client{t}", f"vm{i % 3}", "write_memory",
                       {"addr": 0x1000 * i, "data": bytes([t, i])}, "ok", f"t{t} i{i}")

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return log


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Path, AuditLog]:
    path = tmp_path / "audit.jsonl"
    log = fill(path)
    log.close()
    return path, log


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write(path: Path, content: list[bytes]) -> None:
    path.write_bytes(b"".join(content))


def test_threads_build_one_chain(chain: tuple[Path, AuditLog]) -> None:
    path, log = chain
    result = verify(path)
    assert result.ok and result.error is None and result.line is None
    assert result.records == 100 == log.records
    assert result.head == log.head
    records = [json.loads(raw) for raw in lines(path)]
    assert [r["seq"] for r in records] == list(range(1, 101))
    assert records[0]["prev"] == GENESIS
    assert Counter(r["who"] for r in records) == {f"client{t}": 25 for t in range(4)}
    assert all(r["time"].endswith("+00:00") for r in records)
    assert set(records[0]) == {"seq", "time", "who", "vm", "op", "args_sha256", "result",
                               "detail", "prev", "hash"}
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def test_reopen_continues_the_chain(chain: tuple[Path, AuditLog]) -> None:
    path, old = chain
    with AuditLog(path) as log:
        assert (log.records, log.head) == (100, old.head)
        rec = log.record("bob", "vm1", "kill", {"pid": 1}, "denied", "operate not granted")
    assert rec["seq"] == 101 and rec["result"] == "denied"
    assert verify(path).records == 101
    assert verify(path).head == rec["hash"]


@pytest.mark.parametrize("field", ["seq", "time", "who", "vm", "op", "args_sha256", "result",
                                   "detail", "prev", "hash"])
def test_edited_field(chain: tuple[Path, AuditLog], field: str) -> None:
    path, _ = chain
    content = lines(path)
    record = json.loads(content[49])
    value = record[field]
    if field == "seq":
        record[field] = value + 1
    elif field == "result":
        record[field] = "error" if value == "ok" else "ok"
    elif field in ("args_sha256", "prev", "hash"):
        record[field] = ("1" if value[0] != "1" else "2") + value[1:]
    else:
        record[field] = value + "x"
    content[49] = audit.canonical(record) + b"\n"
    write(path, content)
    result = verify(path)
    assert not result.ok and result.line == 50, result
    assert result.records == 49
    assert "hash mismatch" in result.error


def test_edit_with_recomputed_hash(chain: tuple[Path, AuditLog]) -> None:
    """A forger who fixes the line's own hash still breaks the next line's prev."""
    path, _ = chain
    content = lines(path)
    record = json.loads(content[49])
    record["who"] = "somebody-else"
    del record["hash"]
    record["hash"] = audit.sha256(audit.canonical(record))
    content[49] = audit.canonical(record) + b"\n"
    write(path, content)
    result = verify(path)
    assert (result.ok, result.line) == (False, 51) and "prev" in result.error


def test_non_canonical_edit(chain: tuple[Path, AuditLog]) -> None:
    path, _ = chain
    content = lines(path)
    content[49] = content[49].replace(b'"op":', b'"op": ')  # same JSON value, other bytes
    write(path, content)
    result = verify(path)
    assert (result.ok, result.line) == (False, 50) and "canonical" in result.error


@pytest.mark.parametrize("first", [0, 29, 98])
def test_swapped_lines(chain: tuple[Path, AuditLog], first: int) -> None:
    path, _ = chain
    content = lines(path)
    content[first], content[first + 1] = content[first + 1], content[first]
    write(path, content)
    result = verify(path)
    assert (result.ok, result.line) == (False, first + 1), result


@pytest.mark.parametrize("index", [0, 49, 98])
def test_deleted_line(chain: tuple[Path, AuditLog], index: int) -> None:
    path, _ = chain
    content = lines(path)
    del content[index]
    write(path, content)
    result = verify(path)
    assert (result.ok, result.line, result.records) == (False, index + 1, index), result


@pytest.mark.parametrize("garbage", [b"garbage\n", b"\n", b"{}\n", b'{"seq": 40}\n',
                                     b"\xff\xfe\n", b"[1,2]\n"])
def test_garbage_line(chain: tuple[Path, AuditLog], garbage: bytes) -> None:
    path, _ = chain
    content = lines(path)
    inserted = content[:39] + [garbage] + content[39:]
    write(path, inserted)
    assert (verify(path).ok, verify(path).line) == (False, 40)
    content[39] = garbage  # replaced rather than inserted
    write(path, content)
    assert (verify(path).ok, verify(path).line) == (False, 40)


def test_torn_last_line(chain: tuple[Path, AuditLog]) -> None:
    path, _ = chain
    data = path.read_bytes()
    path.write_bytes(data[:-20])
    result = verify(path)
    assert (result.ok, result.line, result.records) == (False, 100, 99)
    with pytest.raises(AuditError, match="incomplete"):
        AuditLog(path)  # never silently restarts or continues a broken chain
    path.write_bytes(data[:-1] + b"x\n")
    with pytest.raises(AuditError, match="corrupt"):
        AuditLog(path)


def test_truncation_at_the_end(chain: tuple[Path, AuditLog]) -> None:
    path, log = chain
    records = [json.loads(raw) for raw in lines(path)]
    write(path, lines(path)[:97])
    assert verify(path).ok  # undetectable from the file alone, by design
    result = verify(path, expect_head=log.head)
    assert not result.ok and "not in the chain" in result.error
    result = verify(path, expect_records=100)
    assert (result.ok, result.line, result.records) == (False, 98, 97)
    # a checkpoint of an older head stays valid as the log grows past it
    assert verify(path, expect_head=records[49]["hash"]).ok
    assert verify(path, expect_head=records[49]["hash"], expect_records=50).ok
    assert not verify(path, expect_head=records[49]["hash"], expect_records=51).ok
    path.write_bytes(b"")
    assert not verify(path, expect_head=log.head).ok


def test_whole_file_emptied_or_missing(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "new.jsonl"
    result = verify(path)
    assert not result.ok and "cannot read" in result.error
    with AuditLog(path) as log:  # a missing file starts a new chain
        assert (log.records, log.head) == (0, GENESIS)
        first = log.record("a", "vm", "op", {}, "ok")
    assert first["seq"] == 1 and first["prev"] == GENESIS
    assert verify(path).ok


def test_runtime_truncation_and_replacement_are_refused(chain: tuple[Path, AuditLog]) -> None:
    path, _ = chain
    log = AuditLog(path)
    write(path, lines(path)[:90])
    with pytest.raises(AuditError, match="shrank"):
        log.record("a", "vm", "op", {}, "ok")
    log.close()
    log = AuditLog(path)
    path.rename(path.with_suffix(".old"))
    with pytest.raises(AuditError, match="deleted or moved"):
        log.record("a", "vm", "op", {}, "ok")
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.record("a", "vm", "op", {}, "ok")


def test_args_digest() -> None:
    assert args_digest({"a": 1, "b": [1, 2]}) == args_digest({"b": [1, 2], "a": 1})
    assert args_digest({"a": 1}) != args_digest({"a": 2})
    assert args_digest({"data": b"\x00\x01"}) != args_digest({"data": b"\x00\x02"})
    assert args_digest({"data": b"abc"}) == args_digest({"data": bytearray(b"abc")})
    assert args_digest((1, 2)) == args_digest([1, 2])
    assert args_digest({1: "x"}) == args_digest({"1": "x"})
    assert len(args_digest({})) == 64
    assert args_digest({}) == audit.sha256(b"{}")
    with pytest.raises(ValueError):
        args_digest({"x": float("nan")})
    with pytest.raises(ValueError):
        args_digest({1: "a", "1": "b"})
    with pytest.raises(TypeError):
        args_digest({"x": object()})


def test_record_validates(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.jsonl") as log:
        with pytest.raises(ValueError):
            log.record("a", "vm", "op", {}, "maybe")
        with pytest.raises(TypeError):
            log.record(None, "vm", "op", {}, "ok")  # type: ignore[arg-type]
        rec = log.record("ünïcode", "vm", "op", {"path": "/tmp/é"}, "error", "détail")
    assert verify(tmp_path / "a.jsonl").ok
    assert json.loads((tmp_path / "a.jsonl").read_text())["who"] == rec["who"]


def append_many(path: str, who: str, n: int, start: multiprocessing.Event) -> None:
    start.wait(30)
    with AuditLog(Path(path)) as log:
        for i in range(n):
            log.record(who, "vm", "op", {"i": i}, "ok")


def test_two_processes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=append_many, args=(str(path), f"p{k}", 60, start))
             for k in range(2)]
    for p in procs:
        p.start()
    start.set()
    with AuditLog(path) as log:  # and this process at the same time
        for i in range(30):
            log.record("parent", "vm", "op", {"i": i}, "ok")
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    result = verify(path)
    assert result.ok and result.records == 150, result
    assert Counter(json.loads(r)["who"] for r in lines(path)) == {"p0": 60, "p1": 60,
                                                                   "parent": 30}


def inherited(log: AuditLog, who: str, n: int) -> None:
    for i in range(n):
        log.record(who, "vm", "op", {"i": i}, "ok")
    os._exit(0)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_forked_children_sharing_one_log(tmp_path: Path) -> None:
    """flock belongs to the open file, which fork shares: the child must reopen it."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.record("parent", "vm", "op", {}, "ok")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=inherited, args=(log, f"c{k}", 50)) for k in range(2)]
    for p in procs:
        p.start()
    for i in range(50):
        log.record("parent", "vm", "op", {"i": i}, "ok")
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    log.close()
    result = verify(path)
    assert result.ok and result.records == 151, result


def test_cli_verify(chain: tuple[Path, AuditLog]) -> None:
    path, log = chain
    command = {c.name: c for c in COMMANDS}["audit"]
    runner = CliRunner()
    result = runner.invoke(command, ["verify", str(path)])
    assert result.exit_code == 0 and "100 records" in " ".join(result.output.split())
    result = runner.invoke(command, ["verify", str(path), "--head", log.head, "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["ok"] is True
    content = lines(path)
    del content[9]
    write(path, content)
    result = runner.invoke(command, ["verify", str(path)])
    assert result.exit_code == 1 and "line 10" in result.output
    result = runner.invoke(command, ["verify", str(path), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["line"] == 10
