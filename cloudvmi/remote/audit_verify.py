"""Checking an audit log: its chain alone, or with what the auditor holds.

- the chain alone finds an edited, reordered, inserted or deleted line, but not a log that
  was rewritten whole or lost its last lines;
- INITIAL_KEY (K_1, from the initial key file) checks every record's MAC: a record anyone
  without the key wrote, edited or moved is found at its line;
- PUBLIC_KEY (the agent's certificate) with CHECKPOINTS (the sink) checks each signed
  checkpoint against the record it names, and that the log is not shorter than the last;
- KEY_FILE (the agent's key state) must describe the log's last record, and with
  INITIAL_KEY its key must be the one that follows it, which nobody can fake for a shorter
  log once the later keys existed.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudvmi.remote.audit_checkpoint import CheckpointSink, check_signature, keyring
from cloudvmi.remote.audit_key import KeyFile, chain_id, key_at, keys_from, mac, wipe
from cloudvmi.remote.audit_record import GENESIS, AuditError, body_of, canonical, parse, sha256


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int  # records read and found intact (up to the first problem)
    error: str | None = None
    line: int | None = None  # 1-based line of the first problem
    head: str = GENESIS  # hash of the last intact record
    authenticated: bool = False  # every record's MAC was checked with the initial key
    checkpoints: int = 0  # signed checkpoints checked against the log
    signed: int = 0  # records covered by the last of them
    open_intents: int = 0  # records "started" that no outcome refers to (yet)
    chain: str | None = None  # the chain id, from the initial key or the checkpoints

    def __bool__(self) -> bool:
        return self.ok


class _Broken(Exception):
    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def _checkpoints(path: Path | str, keys: dict, chain: str | None) -> Iterator[dict]:
    """The sink's checkpoints, each signed by one of KEYS, of one chain, in order."""
    seq = -1
    for lineno, cp, problem in CheckpointSink(path).lines():
        if problem:
            raise _Broken(problem)
        bad = check_signature(cp, keys)
        if bad:
            raise _Broken(f"checkpoint line {lineno}: {bad}")
        if chain is not None and cp["chain"] != chain:
            raise _Broken(f"checkpoint line {lineno} belongs to another chain (another "
                          "initial key, or another log)")
        chain = cp["chain"]
        if cp["seq"] < seq:
            raise _Broken(f"checkpoint line {lineno}: seq {cp['seq']} after {seq}: the "
                          "checkpoints were reordered")
        seq = cp["seq"]
        yield cp


def verify(path: Path | str, expect_head: str | None = None,
           expect_records: int | None = None, *, initial_key: bytes | None = None,
           public_key: Any = None, checkpoints: Path | str | None = None,
           key_file: Path | str | None = None) -> VerifyResult:
    """Check the log at PATH and report the first problem.

    EXPECT_HEAD is a record hash kept elsewhere: it must still be in the chain.
    EXPECT_RECORDS requires at least that many records, and with EXPECT_HEAD pins the head
    to that seq. INITIAL_KEY, PUBLIC_KEY (a certificate, public key or path, or a list of
    them, for an agent whose key changed) with CHECKPOINTS, and KEY_FILE: see the module.
    """
    if checkpoints is not None and public_key is None:
        return VerifyResult(False, 0, "checking checkpoints needs the agent's certificate "
                            "or public key")
    try:
        keys = None if public_key is None else keyring(
            public_key if isinstance(public_key, list | tuple) else [public_key])
    except (AuditError, OSError) as exc:
        return VerifyResult(False, 0, f"cannot load the public key: {exc}")
    state = {"seq": 0, "head": GENESIS, "checkpoints": 0, "signed": 0, "open": 0,
             "chain": None if initial_key is None else chain_id(initial_key)}
    try:
        _walk(Path(path), expect_head, expect_records, initial_key, keys, checkpoints,
              key_file, state)
    except _Broken as exc:
        return _result(False, state, initial_key, str(exc), exc.line)
    return _result(True, state, initial_key)


def _result(ok: bool, state: dict, initial_key: bytes | None, error: str | None = None,
            line: int | None = None) -> VerifyResult:
    return VerifyResult(ok, state["seq"], error, line, state["head"],
                        authenticated=initial_key is not None and ok,
                        checkpoints=state["checkpoints"], signed=state["signed"],
                        open_intents=state["open"], chain=state["chain"])


def _walk(path: Path, expect_head: str | None, expect_records: int | None,
          initial_key: bytes | None, keys: dict | None, checkpoints: Path | str | None,
          key_file: Path | str | None, state: dict) -> None:
    """Stream the log (and the sink alongside), updating STATE; raise _Broken."""
    cps = iter(()) if checkpoints is None else _checkpoints(checkpoints, keys,
                                                             state["chain"])
    pending = next(cps, None)
    macs = None if initial_key is None else keys_from(initial_key)
    seq, prev, head, found_at, opened = 0, GENESIS, GENESIS, None, set()
    record: dict | None = None
    lineno = 0

    def checkpoints_at(seq: int, head: str) -> None:
        nonlocal pending
        while pending is not None and pending["seq"] == seq:
            if pending["head"] != head:
                raise _Broken(f"record {seq} differs from the one checkpoint signed: the "
                              "log was rewritten", seq or None)
            state["chain"] = state["chain"] or pending["chain"]
            state["checkpoints"] += 1
            state["signed"] = seq
            pending = next(cps, None)

    try:
        checkpoints_at(0, GENESIS)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below; streamed, never read whole
        except OSError as exc:
            raise _Broken(f"cannot read {path}: {exc.strerror}") from exc
        with f:
            for raw in f:
                lineno += 1
                if not raw.endswith(b"\n"):
                    raise _Broken("incomplete last line (truncated or torn write)", lineno)
                line = raw[:-1]
                record, problem = parse(line)
                if record is None:
                    raise _Broken(problem, lineno)
                if record["seq"] != seq + 1:
                    raise _Broken(f"seq {record['seq']} where {seq + 1} was expected: a line "
                                  "was deleted, moved or inserted", lineno)
                if record["prev"] != prev:
                    raise _Broken("first record does not start the chain" if seq == 0 else
                                  "prev does not match the line before: a line was deleted, "
                                  "moved or edited", lineno)
                if macs is not None and record["mac"] != mac(
                        next(macs), canonical(body_of(record, "mac", "hash"))):
                    raise _Broken("MAC mismatch: the record was written, edited or moved by "
                                  "someone without the chain's key", lineno)
                if record["result"] == "started":
                    opened.add(record["seq"])
                if record["ref"] is not None and record["ref"] not in opened:
                    raise _Broken(f"an outcome of record {record['ref']}, which is not an "
                                  "open intent", lineno)
                opened.discard(record["ref"])
                seq, prev, head = record["seq"], sha256(line), record["hash"]
                state.update(seq=seq, head=head, open=len(opened))
                if head == expect_head and found_at is None:
                    found_at = seq
                checkpoints_at(seq, head)
        if pending is not None:
            raise _Broken(f"{seq} records, fewer than the {pending['seq']} of a signed "
                          "checkpoint: records were deleted from the end", seq + 1)
        for _ in cps:  # check the signatures and order of the rest too
            pass
    finally:
        if macs is not None:
            macs.close()
    if key_file is not None:
        _check_key_state(key_file, seq, head, record, initial_key, state)
    if expect_records is not None and seq < expect_records:
        raise _Broken(f"{seq} records where at least {expect_records} were expected: "
                      "records were deleted from the end", seq + 1)
    if expect_head is not None:
        if found_at is None:
            raise _Broken("the expected head is not in the chain: records were deleted from "
                          "the end, or the log was rewritten")
        if expect_records is not None and found_at != expect_records:
            raise _Broken(f"the expected head is record {found_at}, not {expect_records}",
                          found_at)


def _check_key_state(key_file: Path | str, seq: int, head: str, last: dict | None,
                     initial_key: bytes | None, state: dict) -> None:
    try:
        kstate = KeyFile(key_file).load(repair=False)
    except AuditError as exc:
        raise _Broken(str(exc)) from exc
    if kstate is None:
        raise _Broken(f"no key state at {key_file}")
    try:
        # one record ahead, MACed with the state's key: the agent stopped between writing
        # a record and moving its key
        ahead = (kstate.seq == seq - 1 and last is not None and last["prev"] == kstate.line
                 and last["mac"] == mac(kstate.key, canonical(body_of(last, "mac", "hash"))))
        if (kstate.seq, kstate.head) != (seq, head) and not ahead:
            raise _Broken(f"the key state has seen {kstate.seq} records, the log holds {seq}"
                          + (": records were deleted from the end" if kstate.seq > seq
                             else ": records were appended without the key"
                             if kstate.seq < seq else ": the log was rewritten"))
        if state["chain"] is not None and kstate.chain != state["chain"]:
            raise _Broken("the key state belongs to another chain")
        if initial_key is not None:
            expected = key_at(initial_key, kstate.seq + 1)
            try:
                if expected != kstate.key:
                    raise _Broken("the key state's key is not the chain's next key: it "
                                  "was forged or rolled back")
            finally:
                wipe(expected)
    finally:
        wipe(kstate.key)
