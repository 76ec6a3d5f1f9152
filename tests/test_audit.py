"""The audit log: concurrent appends keep one valid chain, and every edit, reordering,
deletion or torn line is reported at the right line; a forger who recomputes the SHA-256
chain is caught by the forward-secure MACs, the signed checkpoints and the agent itself;
intents fail closed; records are bounded and denials aggregated."""

import errno
import json
import multiprocessing
import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from cloudvmi.cli.remote_admin import COMMANDS
from cloudvmi.remote import audit, audit_key, certs
from cloudvmi.remote.audit import GENESIS, AuditError, AuditLog, args_digest, verify
from cloudvmi.remote.audit_denials import OVERFLOW, DenialAggregator
from cloudvmi.remote.audit_key import read_initial


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


@pytest.fixture(scope="module")
def chain_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AuditLog]:
    path = tmp_path_factory.mktemp("chain") / "audit.jsonl"
    log = fill(path)
    log.close()
    return path, log


@pytest.fixture
def chain(tmp_path: Path, chain_template: tuple[Path, AuditLog]) -> tuple[Path, AuditLog]:
    """A closed log of 100 records from 4 threads (built once, copied with its key state)."""
    template, log = chain_template
    path = tmp_path / "audit.jsonl"
    shutil.copy(template, path)
    shutil.copy(audit.default_key_file(template), audit.default_key_file(path))
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
    assert set(records[0]) == audit.FIELDS == {
        "v", "seq", "time", "who", "peer", "vm", "op", "args", "args_sha256", "result",
        "detail", "count", "ref", "prev", "mac", "hash"}
    first = records[0]
    assert first["args"]["data"]["$bytes"]["len"] == 2 and "hex" in first["args"]["data"]["$bytes"]
    assert first["args_sha256"] == args_digest({"addr": first["args"]["addr"],
                                                "data": bytes.fromhex(
                                                    first["args"]["data"]["$bytes"]["hex"])})
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def test_reopen_continues_the_chain(chain: tuple[Path, AuditLog]) -> None:
    path, old = chain
    with AuditLog(path) as log:
        assert (log.records, log.head) == (100, old.head)
        rec = log.record("bob", "vm1", "kill", {"pid": 1}, "denied", "operate not granted")
    assert rec["seq"] == 101 and rec["result"] == "denied"
    assert verify(path).records == 101
    assert verify(path).head == rec["hash"]


@pytest.mark.parametrize("field", sorted(audit.FIELDS))
def test_edited_field(chain: tuple[Path, AuditLog], field: str) -> None:
    path, _ = chain
    content = lines(path)
    record = json.loads(content[49])
    value = record[field]
    if field in ("seq", "count"):
        record[field] = value + 1
    elif field == "v":
        record[field] = 3
    elif field == "ref":
        record[field] = 1
    elif field == "peer":
        record[field] = "ipv4:10.0.0.1:1234"
    elif field == "args":
        record[field] = {**value, "addr": 0}
    elif field == "result":
        record[field] = "error" if value == "ok" else "ok"
    elif field in ("args_sha256", "prev", "mac", "hash"):
        record[field] = ("1" if value[0] != "1" else "2") + value[1:]
    else:
        record[field] = value + "x"
    content[49] = audit.canonical(record) + b"\n"
    write(path, content)
    result = verify(path)
    assert not result.ok and result.line == 50, result
    assert result.records == 49
    assert ("version" if field == "v" else "hash mismatch") in result.error


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
    full = lines(path)
    log = AuditLog(path)
    write(path, lines(path)[:90])
    with pytest.raises(AuditError, match="shrank"):
        log.record("a", "vm", "op", {}, "ok")
    log.close()
    with pytest.raises(AuditError, match="fewer than the 100 the agent wrote"):
        AuditLog(path)  # nor when it opens the shortened log afresh
    write(path, full)
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


# -- forgery resistance: forward-secure MACs, signed checkpoints, the agent's own checks ----

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """An agent's TLS credentials, as `cloudvmi certs` makes them (EC P-256), and another's."""
    ca_dir = tmp_path_factory.mktemp("pki")
    certs.init_ca(ca_dir)
    agent = certs.issue(ca_dir, ca_dir, "node1", "agent")
    other = certs.issue(ca_dir, ca_dir, "node2", "agent")
    return SimpleNamespace(cert=agent.cert, key=agent.key, other_cert=other.cert,
                           other_key=other.key)


class Keyed(SimpleNamespace):
    def open(self, **kw) -> AuditLog:
        options = dict(key_file=self.key_file, initial_key_file=self.initial_file,
                       checkpoints=self.sink, signer=self.pki.key, checkpoint_every=10)
        return AuditLog(self.path, **{**options, **kw})

    def material(self, **kw) -> dict:
        return {"initial_key": bytes(read_initial(self.initial_file)),
                "public_key": self.pki.cert, "checkpoints": self.sink,
                "key_file": self.key_file, **kw}


@pytest.fixture
def keyed(tmp_path: Path, pki: SimpleNamespace) -> Keyed:
    """50 records, checkpointed every 10, the log, key state and sink in three places."""
    k = Keyed(path=tmp_path / "log" / "audit.jsonl", key_file=tmp_path / "state" / "audit.key",
              initial_file=tmp_path / "auditor" / "k1", sink=tmp_path / "sink" / "cp.jsonl",
              pki=pki)
    with k.open() as log:
        for i in range(50):
            log.record(f"client{i % 3}", f"vm{i % 2}", "write_file",
                       {"path": f"/tmp/f{i}", "data": b"x" * i}, "ok")
        k.head, k.chain = log.head, log.chain
    return k


def forge(record: dict, prev_line: bytes | None) -> bytes:
    """What a forger who can write the log does: chain the record on (to PREV_LINE, or as
    the first) and recompute its `hash`; the MAC they cannot compute."""
    record = {**record, "prev": GENESIS if prev_line is None else audit.sha256(prev_line)}
    record["hash"] = audit.sha256(audit.canonical({k: v for k, v in record.items()
                                                    if k != "hash"}))
    return audit.canonical(record)


def rechain(records: list[dict]) -> list[bytes]:
    """RECORDS renumbered and the whole SHA-256 chain rebuilt."""
    out: list[bytes] = []
    for i, record in enumerate(records):
        out.append(forge({**record, "seq": i + 1}, out[-1][:-1] if out else None) + b"\n")
    return out


def records_of(path: Path) -> list[dict]:
    return [json.loads(raw) for raw in lines(path)]


def test_keyed_log_verifies_with_all_material(keyed: Keyed) -> None:
    result = verify(keyed.path, **keyed.material())
    assert result.ok, result
    assert (result.records, result.head, result.chain) == (50, keyed.head, keyed.chain)
    assert result.authenticated and result.signed == 50
    assert result.checkpoints == 6  # the genesis (0), then 10, 20, 30, 40, 50
    cps = [json.loads(line) for line in keyed.sink.read_text().splitlines()]
    assert [c["seq"] for c in cps] == [0, 10, 20, 30, 40, 50]
    assert {c["alg"] for c in cps} == {"ecdsa-secp256r1-sha256"}
    assert cps[-1]["head"] == keyed.head and cps[-1]["chain"] == keyed.chain
    assert keyed.chain == audit_key.chain_id(read_initial(keyed.initial_file))
    assert oct(keyed.key_file.stat().st_mode & 0o777) == oct(0o600)
    assert oct(keyed.initial_file.stat().st_mode & 0o777) == oct(0o400)
    # the wrong material fails: another initial key, another agent's certificate
    wrong = verify(keyed.path, initial_key=bytes(32))
    assert not wrong.ok and wrong.line == 1 and "MAC" in wrong.error
    wrong = verify(keyed.path, public_key=keyed.pki.other_cert, checkpoints=keyed.sink)
    assert not wrong.ok and "not among the keys given" in wrong.error
    both = verify(keyed.path, public_key=[keyed.pki.other_cert, keyed.pki.cert],
                  checkpoints=keyed.sink)
    assert both.ok and both.signed == 50
    assert not verify(keyed.path, checkpoints=keyed.sink).ok  # a sink needs the public key


def test_forged_appended_record(keyed: Keyed) -> None:
    """The forger recomputes the plain SHA chain: the chain alone passes, nothing else."""
    content = lines(keyed.path)
    record = {**json.loads(content[-1]), "seq": 51, "who": "root", "op": "kill",
              "mac": "0" * 64}
    content.append(forge(record, content[-1][:-1]) + b"\n")
    write(keyed.path, content)
    assert verify(keyed.path).ok  # by design: SHA-256 alone binds nothing to the agent
    result = verify(keyed.path, initial_key=keyed.material()["initial_key"])
    assert (result.ok, result.line, result.records) == (False, 51, 50)
    assert "MAC mismatch" in result.error
    result = verify(keyed.path, key_file=keyed.key_file)
    assert not result.ok and "appended without the key" in result.error
    public = verify(keyed.path, public_key=keyed.pki.cert, checkpoints=keyed.sink)
    assert public.ok and (public.records, public.signed) == (51, 50)  # the unsigned tail
    with pytest.raises(AuditError, match="appended without the key"):
        keyed.open()


def test_forged_append_while_open_is_refused(keyed: Keyed) -> None:
    log = keyed.open()
    log.record("a", "vm", "op", {}, "ok")
    last = lines(keyed.path)[-1]
    with open(keyed.path, "ab") as f:  # the forger appends to the open log
        f.write(forge({**json.loads(last), "seq": 52}, last[:-1]) + b"\n")
    with pytest.raises(AuditError, match="appended without the key"):
        log.record("a", "vm", "op", {}, "ok")
    with pytest.raises(AuditError, match="appended without the key"):
        log.intent("a", "vm", "op", {})
    log.close()


def test_rewritten_record_with_the_chain_recomputed(keyed: Keyed) -> None:
    records = records_of(keyed.path)
    records[19] = {**records[19], "who": "somebody-else"}
    write(keyed.path, rechain(records))
    assert verify(keyed.path).ok  # a consistent SHA-256 chain, rebuilt
    result = verify(keyed.path, initial_key=keyed.material()["initial_key"])
    assert (result.ok, result.line) == (False, 20) and "MAC" in result.error
    result = verify(keyed.path, public_key=keyed.pki.cert, checkpoints=keyed.sink)
    assert (result.ok, result.line) == (False, 20) and "checkpoint signed" in result.error
    result = verify(keyed.path, key_file=keyed.key_file)
    assert not result.ok and "rewritten" in result.error
    with pytest.raises(AuditError, match="rewritten"):
        keyed.open()


def test_reordered_records_with_the_chain_recomputed(keyed: Keyed) -> None:
    records = records_of(keyed.path)
    records[19], records[20] = records[20], records[19]
    write(keyed.path, rechain(records))
    assert verify(keyed.path).ok
    result = verify(keyed.path, **keyed.material())
    assert (result.ok, result.line) == (False, 20) and "MAC" in result.error
    result = verify(keyed.path, public_key=keyed.pki.cert, checkpoints=keyed.sink)
    assert (result.ok, result.line) == (False, 20), result


def test_truncated_log(keyed: Keyed) -> None:
    write(keyed.path, lines(keyed.path)[:45])
    assert verify(keyed.path).ok  # the file alone cannot tell
    assert verify(keyed.path, initial_key=keyed.material()["initial_key"]).ok  # nor MACs
    result = verify(keyed.path, public_key=keyed.pki.cert, checkpoints=keyed.sink)
    assert (result.ok, result.records, result.line) == (False, 45, 46)
    assert "fewer than the 50 of a signed checkpoint" in result.error
    result = verify(keyed.path, key_file=keyed.key_file)
    assert not result.ok and "deleted from the end" in result.error
    with pytest.raises(AuditError, match="fewer than the 50 the agent wrote"):
        keyed.open()
    keyed.path.unlink()  # emptied or deleted: the same
    with pytest.raises(AuditError, match="fewer than the 50"):
        keyed.open()


def test_refuses_a_log_rolled_back_with_its_key_state(keyed: Keyed, tmp_path: Path) -> None:
    """Restoring an older log *and* its key state passes the key state check; the signed
    checkpoints that went past it do not let it through."""
    backup = tmp_path / "backup"
    backup.mkdir()
    with keyed.open() as log:
        shutil.copy(keyed.path, backup / "log")
        shutil.copy(keyed.key_file, backup / "key")
        for _ in range(10):
            log.record("a", "vm", "op", {}, "ok")
    shutil.copy(backup / "log", keyed.path)
    shutil.copy(backup / "key", keyed.key_file)
    with pytest.raises(AuditError, match="fewer than the 60 of the last checkpoint"):
        keyed.open()
    result = verify(keyed.path, **keyed.material())
    assert not result.ok and "fewer than the 60" in result.error


def test_lost_key_state_or_foreign_sink_is_refused(keyed: Keyed) -> None:
    saved = keyed.key_file.read_bytes()
    keyed.key_file.unlink()
    with pytest.raises(AuditError, match="key state .* is missing"):
        keyed.open()
    keyed.key_file.write_bytes(b"\0" * len(saved))
    with pytest.raises(AuditError, match="corrupt"):
        keyed.open()
    keyed.key_file.unlink()
    keyed.path.unlink()  # a fresh chain, but the sink still holds the old one's checkpoints
    keyed.initial_file.rename(keyed.initial_file.with_suffix(".old"))
    with pytest.raises(AuditError, match="another chain"):
        keyed.open()


def test_forged_or_reordered_checkpoints(keyed: Keyed) -> None:
    content = keyed.sink.read_bytes().splitlines(keepends=True)
    cp = json.loads(content[2])
    cp["seq"] = 25
    keyed.sink.write_bytes(b"".join([*content[:2], audit.canonical(cp) + b"\n",
                                     *content[3:]]))
    result = verify(keyed.path, public_key=keyed.pki.cert, checkpoints=keyed.sink)
    assert not result.ok and "bad signature" in result.error
    keyed.sink.write_bytes(b"".join([content[0], content[2], content[1], *content[3:]]))
    result = verify(keyed.path, public_key=keyed.pki.cert, checkpoints=keyed.sink)
    assert not result.ok and "reordered" in result.error


def test_key_moves_forward_and_old_keys_are_erased(keyed: Keyed) -> None:
    initial = read_initial(keyed.initial_file)
    keys = [bytes(audit_key.key_at(initial, i)) for i in range(1, 53)]  # K_1 .. K_52
    assert keys[1] == bytes(audit_key.evolve(keys[0]))
    state = keyed.key_file.read_bytes()
    assert len(state) == 2 * audit_key.SLOT
    for used in keys[:50]:  # K_1 .. K_50 signed records 1 .. 50: gone from the state
        assert used.hex().encode() not in state and used not in state
    assert keys[50].hex().encode() in state  # K_51, for the next record, and only it
    loaded = audit_key.KeyFile(keyed.key_file).load()
    assert (loaded.seq, loaded.head, bytes(loaded.key)) == (50, keyed.head, keys[50])
    with keyed.open() as log:  # and the agent holds no key between appends
        log.record("a", "vm", "op", {}, "ok")
        held = [v for v in vars(log).values() if isinstance(v, bytes | bytearray)]
        assert not any(bytes(v) in keys for v in held)
    state = keyed.key_file.read_bytes()
    assert keys[50].hex().encode() not in state and keys[51].hex().encode() in state
    assert verify(keyed.path, **keyed.material()).ok


def test_crash_between_the_record_and_the_key_move(keyed: Keyed) -> None:
    """The record is on disk, the key state still names the one before: the agent proves
    the record is its own (its MAC holds under the state's key) and moves on."""
    before = keyed.key_file.read_bytes()
    with keyed.open() as log:
        log.record("a", "vm", "op", {"i": 1}, "ok")
    keyed.key_file.write_bytes(before)  # as if the process died before storing the key
    result = verify(keyed.path, **keyed.material())
    assert result.ok and result.records == 51  # one ahead is the crash window
    with keyed.open() as log:
        assert log.records == 51
        log.record("a", "vm", "op", {"i": 2}, "ok")
    assert verify(keyed.path, **keyed.material()).records == 52


# -- intent, then outcome ---------------------------------------------------------------------

def test_intent_then_outcome(keyed: Keyed) -> None:
    with keyed.open() as log:
        token = log.intent("alice", "web1", "kill", {"pid": 42, "signal": 9},
                           peer="ipv4:10.0.0.5:40000")
        started = records_of(keyed.path)[-1]  # on disk before the action
        assert (started["seq"], started["result"], started["ref"]) == (51, "started", None)
        assert started["args"] == {"pid": 42, "signal": 9}
        assert started["peer"] == "ipv4:10.0.0.5:40000"
        assert verify(keyed.path).open_intents == 1
        done = log.outcome(token, "ok", args={"killed": True})
        assert (done["ref"], done["who"], done["vm"], done["op"], done["peer"]) == (
            51, "alice", "web1", "kill", "ipv4:10.0.0.5:40000")
        with pytest.raises(ValueError, match="not open"):
            log.outcome(token, "ok")
        with pytest.raises(ValueError):
            log.outcome(log.intent("a", "vm", "op", {}), "started")
    result = verify(keyed.path, **keyed.material())
    assert result.ok and result.open_intents == 1  # the last intent has no outcome


def test_outcome_must_close_an_open_intent(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    with AuditLog(path) as log:
        log.record("a", "vm", "op", {}, "ok")
    content = lines(path)
    record = {**json.loads(content[0]), "seq": 2, "ref": 1}
    content.append(forge(record, content[0][:-1]) + b"\n")
    write(path, content)
    result = verify(path)
    assert (result.ok, result.line) == (False, 2) and "not an open intent" in result.error


def test_intent_fails_closed(keyed: Keyed, monkeypatch: pytest.MonkeyPatch) -> None:
    log = keyed.open()
    size, state = keyed.path.stat().st_size, keyed.key_file.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit.os, "fsync", full)  # disk full
    with pytest.raises(AuditError, match="No space left"):
        log.intent("a", "vm", "kill", {"pid": 1})
    monkeypatch.undo()
    assert keyed.path.stat().st_size == size  # the torn intent was undone
    assert keyed.key_file.read_bytes() == state

    def broken_store(*_: object) -> None:
        raise AuditError("cannot update the audit key state: I/O error")

    monkeypatch.setattr(audit_key.KeyFile, "store", broken_store)  # the key cannot move
    with pytest.raises(AuditError, match="key state"):
        log.intent("a", "vm", "kill", {"pid": 1})  # on disk, but the caller fails closed
    monkeypatch.undo()
    assert keyed.key_file.read_bytes() == state
    assert verify(keyed.path, **keyed.material()).ok  # one ahead: the crash window
    token = log.intent("a", "vm", "kill", {"pid": 1})  # the key catches up, and on it goes
    log.outcome(token, "ok")
    log.close()
    result = verify(keyed.path, **keyed.material())
    assert result.ok and result.records == 53 and result.open_intents == 1

    log = keyed.open()
    keyed.path.rename(keyed.path.with_suffix(".moved"))
    keyed.path.mkdir()  # the log's path is now a directory
    with pytest.raises(AuditError, match="replaced"):
        log.intent("a", "vm", "kill", {"pid": 1})
    keyed.path.rmdir()
    keyed.path.write_bytes(b"")
    keyed.path.chmod(0o444)  # ... a read-only (empty) file
    with pytest.raises(AuditError, match="replaced"):
        log.intent("a", "vm", "kill", {"pid": 1})
    log.close()
    with pytest.raises(AuditError, match="fewer than the"):
        keyed.open()  # and no new agent continues from it either
    keyed.path.unlink()
    keyed.path.mkdir()
    with pytest.raises(AuditError, match="cannot open"):
        keyed.open()


# -- bounded, clear records ---------------------------------------------------------------------

def test_records_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    huge = "w" * (7 << 20)
    with AuditLog(path, denial_window=0) as log:
        rec = log.record(huge, huge + "vm", huge, {"argv": [huge, "x"], "blob": huge.encode()},
                         "error", huge, peer=huge)
    line = lines(path)[0]
    assert len(line) < 16 << 10, len(line)
    assert rec["vm"].startswith("w" * 256) and len(rec["vm"]) < 400
    assert f"[cut {(7 << 20) + 2} bytes sha256:{audit.sha256((huge + 'vm').encode())}]" \
        in rec["vm"]
    assert "[cut " in rec["who"] and "[cut " in rec["op"] and "[cut " in rec["peer"]
    assert rec["detail"].startswith("w" * 1024) and "[cut " in rec["detail"]
    assert rec["args"]["argv"][1] == "x" and "[cut " in rec["args"]["argv"][0]
    assert rec["args"]["blob"] == {"$bytes": {"len": 7 << 20,
                                              "sha256": audit.sha256(huge.encode())}}
    assert rec["args_sha256"] == args_digest({"argv": [huge, "x"], "blob": huge.encode()})
    assert verify(path).ok


def test_arguments_in_clear(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    args = {"path": Path("/etc/passwd"), "argv": ["busybox", "ls", "-la"], "pid": 42,
            "size": 4096, "data": b"\x00\x01", "big": b"x" * 5000,
            "many": list(range(1000)), "deep": [[[[[[[[[[[1]]]]]]]]]]]}
    with AuditLog(path) as log:
        rec = log.record("alice", "web1", "write_file", args, "ok")
    clear = rec["args"]
    assert clear["path"] == "/etc/passwd" and clear["argv"] == ["busybox", "ls", "-la"]
    assert (clear["pid"], clear["size"]) == (42, 4096)
    assert clear["data"] == {"$bytes": {"hex": "0001", "len": 2}}
    assert clear["big"] == {"$bytes": {"len": 5000, "sha256": audit.sha256(b"x" * 5000)}}
    assert clear["many"][:3] == [0, 1, 2] and clear["many"][-1] == "...[+936 more items]"
    assert "nested too deep" in json.dumps(clear["deep"])
    assert rec["args_sha256"] == args_digest(args)
    with AuditLog(path, redact_args=True) as log:
        rec = log.record("alice", "web1", "write_file", args, "ok")
    assert rec["args"] is None and rec["args_sha256"] == args_digest(args)
    with AuditLog(path) as log:  # too much in all: only the size (the digest binds it)
        rec = log.record("a", "vm", "op", {f"k{i}": "v" * 1000 for i in range(60)}, "ok")
    assert set(rec["args"]) == {"$cut"} and len(lines(path)[-1]) < 16 << 10
    assert verify(path).ok


def test_five_huge_denied_names_stay_small(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    with AuditLog(path) as log:
        for i in range(5):
            name = f"{i}" * (7 << 20)
            log.record("?", name, "read_memory", {"args_json": name}, "denied",
                       "read not granted", peer="ipv4:10.0.0.9:5000")
    assert path.stat().st_size < 1 << 20
    records = records_of(path)
    assert [r["count"] for r in records] == [1, 4]  # the first, then the other four
    assert records[1]["vm"] == "*" and len(records[1]["args"]["vms"]) == 4
    with AuditLog(tmp_path / "b.jsonl", denial_window=0) as log:  # even one record each
        for i in range(5):
            name = f"{i}" * (7 << 20)
            log.record("?", name, "read_memory", {"args_json": name}, "denied", "no")
    assert (tmp_path / "b.jsonl").stat().st_size < 1 << 20
    assert verify(path).ok and verify(tmp_path / "b.jsonl").records == 5


# -- denials aggregated ---------------------------------------------------------------------------

def test_handshake_flood_is_aggregated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.jsonl"
    syncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(audit.os, "fsync", lambda fd: syncs.append(fd) or real_fsync(fd))
    log = AuditLog(path, denial_window=60)
    opened = len(syncs)
    for port in range(1000):
        log.record("unauthenticated", "*", "tls-handshake", {}, "denied",
                   "PEER_DID_NOT_RETURN_A_CERTIFICATE", peer=f"ipv4:10.0.0.5:{port}")
    assert len(syncs) - opened <= 3  # one record (log + key state), not a thousand
    assert len(lines(path)) == 1
    log.record("unauthenticated", "*", "tls-handshake", {}, "denied",
               "CERTIFICATE_VERIFY_FAILED", peer="ipv4:10.0.0.5:1")  # another reason
    log.record("unauthenticated", "*", "tls-handshake", {}, "denied",
               "PEER_DID_NOT_RETURN_A_CERTIFICATE", peer="ipv6:[fd00::7]:9")  # elsewhere
    assert len(lines(path)) == 3
    log.close()
    records = records_of(path)
    assert len(records) == 4
    first, aggregate = records[0], records[3]
    assert (first["count"], first["peer"]) == (1, "ipv4:10.0.0.5:0")
    assert (aggregate["count"], aggregate["peer"], aggregate["result"]) == (999, "10.0.0.5",
                                                                          "denied")
    assert aggregate["detail"] == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert aggregate["args"]["aggregated"] == 999 and len(aggregate["args"]["peers"]) == 8
    assert records[2]["peer"] == "ipv6:[fd00::7]:9"
    assert verify(path).ok


def test_denial_window_ends_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    with AuditLog(path, denial_window=0.2) as log:
        for _ in range(3):
            log.record("bob", "vm1", "kill", {"pid": 1}, "denied", "operate not granted")
        deadline = time.monotonic() + 5
        while len(lines(path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r["count"] for r in records_of(path)] == [1, 2]
        assert records_of(path)[1]["vm"] == "vm1"
        log.record("bob", "vm1", "kill", {"pid": 1}, "denied", "operate not granted")
        assert len(lines(path)) == 3  # a new window: its first denial is written at once
    assert verify(path).records == 3


def test_denial_kinds_are_bounded() -> None:
    agg = DenialAggregator(window=10, max_kinds=4)
    written = [agg.offer("?", f"ipv4:10.0.0.{i}:1", "op", "vm", "no", now=0.0)
               for i in range(100)]
    assert written.count(True) == 5  # four kinds, then one overflow window
    ended = agg.drain()
    assert sum(w.count for w in ended) == 95 and ended[0].kind == OVERFLOW
    assert agg.offer("?", "ipv4:10.0.0.1:1", "op", "vm", "no", now=20.0)
    assert not agg.offer("?", "ipv4:10.0.0.1:2", "op", "vm", "no", now=21.0)
    assert agg.offer("?", "ipv4:10.0.0.1:2", "op", "vm", "no", now=31.0)  # after the window
    assert [w.count for w in agg.due(31.0)] == [1]


# -- checkpoints by time, and the CLI ------------------------------------------------------------

def test_time_based_checkpoint(keyed: Keyed) -> None:
    with keyed.open(checkpoint_every=1000, checkpoint_seconds=0.2) as log:
        for _ in range(3):
            log.record("a", "vm", "op", {}, "ok")
        deadline = time.monotonic() + 5
        while json.loads(keyed.sink.read_text().splitlines()[-1])["seq"] != 53 \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert json.loads(keyed.sink.read_text().splitlines()[-1])["seq"] == 53
    assert verify(keyed.path, **keyed.material()).signed == 53


def test_cli_verify_with_material(keyed: Keyed) -> None:
    command = {c.name: c for c in COMMANDS}["audit"]
    runner = CliRunner()
    material = ["--initial-key", str(keyed.initial_file), "--cert", str(keyed.pki.cert),
                "--checkpoints", str(keyed.sink), "--key-file", str(keyed.key_file)]
    result = runner.invoke(command, ["verify", str(keyed.path), *material])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "50 records" in out and "MAC holds" in out and "6 signed checkpoints" in out
    result = runner.invoke(command, ["verify", str(keyed.path), *material, "--json"])
    report = json.loads(result.output)
    assert report["authenticated"] and report["signed"] == 50
    write(keyed.path, lines(keyed.path)[:45])
    result = runner.invoke(command, ["verify", str(keyed.path), *material[2:6]])
    assert result.exit_code == 1 and "signed checkpoint" in result.output
    result = runner.invoke(command, ["verify", str(keyed.path), "--checkpoints",
                                     str(keyed.sink)])
    assert result.exit_code == 1 and "--cert" in result.output


def test_agent_opens_its_log_as_configured(tmp_path: Path, pki: SimpleNamespace) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
node = "node1"
ca = "{pki.cert}"
cert = "{pki.cert}"
key = "{pki.key}"
audit_log = "log/audit.jsonl"
audit_key = "state/audit.key"
audit_checkpoints = "sink/checkpoints.jsonl"
""")
    from cloudvmi.remote.agent import open_audit
    from cloudvmi.remote.config import load

    cfg = load(config)
    with open_audit(cfg) as log:
        log.record("alice", "web1", "kill", {"pid": 1}, "ok")
    assert (tmp_path / "state" / "audit.key").exists()
    initial = tmp_path / "log" / "audit.jsonl.key.initial"
    result = verify(tmp_path / "log" / "audit.jsonl",
                    initial_key=bytes(read_initial(initial)), public_key=pki.cert,
                    checkpoints=tmp_path / "sink" / "checkpoints.jsonl",
                    key_file=tmp_path / "state" / "audit.key")
    assert result.ok and result.authenticated and result.signed == 1
