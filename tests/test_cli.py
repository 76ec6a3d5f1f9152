"""The CLI as a user meets it: tables that fit 80 columns, guest strings printed literally,
one-line errors with a nonzero exit, --wide and --json complete, shell completion."""

import json
import os
import re

import pytest
from click.testing import CliRunner
from rich.cells import cell_len

from cloudvmi.cli import output
from cloudvmi.cli.main import main

LONG = "abcdefghij" * 1000  # the lab workload's 10,000-byte command line
HOSTILE = [  # rows as a guest could make them
    (1, 0, "init", "/bin/sh /init"),
    (2, 0, "kthreadd", "[kthreadd]"),
    (94, 1, "sh", "sh -c x [/x] [bold]b [link=http://x]y"),
    (95, 1, "odd\x1b[31m", "sh -c \x1b[2J\x1b]0;title\x07 \x9b31m end"),
    (96, 1, "sh", f"sh -c while :; do sleep 3600; done long {LONG}"),
    (97, 1, "wide", "日本語のコマンド " * 20),
    (98, 1, "bad", "lone \udcff surrogate\nsecond line"),
]
COLUMNS = ["PID", "PPID", "COMM", "COMMAND"]


def run(*args: str, columns: int = 80, **env: str):
    return CliRunner().invoke(main, list(args), env={"COLUMNS": str(columns), **env},
                              catch_exceptions=False)


def assert_fits(text: str, columns: int = 80) -> None:
    long = [line for line in text.splitlines() if cell_len(line) > columns]
    assert not long, f"{len(long)} lines over {columns} columns: {long[0]!r}"


def assert_inert(text: str) -> None:
    """Nothing a terminal acts on: no ESC, BEL, CSI or other control byte but newline."""
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", text), repr(text[:200])


def render(capsys, monkeypatch, columns: int = 80, wide: bool = False) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr(output.settings, "wide", wide)
    output.table("Processes of [red]vm[/red]", COLUMNS, HOSTILE, caption="partial: [/x]")
    return capsys.readouterr().out


@pytest.mark.parametrize("columns", [80, 100, 40])
def test_hostile_rows_fit_and_stay_literal(capsys, monkeypatch, columns):
    out = render(capsys, monkeypatch, columns)
    assert_fits(out, columns)
    assert_inert(out)
    assert len(out.splitlines()) == 1 + 1 + len(HOSTILE) + 1  # title, header, rows, caption
    if columns >= 80:
        for shown in ("[kthreadd]", "[/x] [bold]b", "\\x1b[2J\\x1b]0;title\\x07",
                      "\\x9b31m", "odd\\x1b[31m", "[red]vm[/red]", "partial: [/x]",
                      "lone \\udcff", "surrogate\\x0asecond"):
            assert shown in out
    rows = {line.split()[0]: line for line in out.splitlines()[2:-1]}
    assert rows["96"].endswith("…") and cell_len(rows["96"]) == columns
    assert rows["1"].rstrip().endswith("/bin/sh /init")  # short fields are never cut


def test_wide_prints_every_field_whole(capsys, monkeypatch):
    out = render(capsys, monkeypatch, 80, wide=True)
    assert_inert(out)
    assert LONG in out and ("日本語のコマンド " * 20).strip() in out
    assert "…" not in out


def test_identifiers_are_never_cut():
    # PID-like and hex columns keep their width; the widest free column gives way first
    widths = output.fit([7, 18, 10, 200], [True, True, False, False], [3, 7, 4, 7], 60)
    assert widths[:2] == [7, 18] and sum(widths) == 60
    assert widths[2] == 10  # the short free column stays whole while the long one is cut
    assert output.fit([5, 30], [True, False], [3, 8], 100) == [5, 30]  # fits: untouched


def test_json_escapes_c1_controls_and_keeps_everything(capsys):
    output.emit_json({"cmdline": "a\x1b[2J\x9b" + LONG})
    text = capsys.readouterr().out
    assert_inert(text)
    assert json.loads(text)["cmdline"] == "a\x1b[2J\x9b" + LONG


@pytest.fixture(scope="module")
def dump(guest_images):
    return str(guest_images("6.1") / "6.1.elf")


def test_ps_on_a_real_guest(dump):
    table = run("ps", dump)
    assert table.exit_code == 0, table.stderr
    assert_fits(table.stdout)
    assert_inert(table.stdout)
    data = run("ps", dump, "--json")
    procs = json.loads(data.stdout)["items"]
    header, *rows = table.stdout.splitlines()[1:]
    lines = {line.split()[0]: line for line in rows}
    assert len(lines) == len(procs)
    at = header.index("COMMAND")
    for p in procs:  # every process is a row, its PID and its command line's start shown
        shown = output.escape(" ".join(p["cmdline"]) or f"[{p['comm']}]")
        cell = lines[str(p["pid"])][at:].rstrip()
        assert cell == shown or (cell.endswith("…") and shown.startswith(cell[:-1])), cell
    assert any("[kthreadd]" in line for line in lines.values())
    long = [p for p in procs if LONG in " ".join(p["cmdline"])]
    assert long, "the workload's 10,000-byte command line"
    wide = run("ps", dump, "--wide")
    assert LONG in wide.stdout and LONG not in table.stdout
    assert run("--wide", "ps", dump).stdout == wide.stdout


@pytest.mark.parametrize("command", ["info", "modules", "ifaces", "routes", "mounts",
                                     "integrity-checks", "sockets"])
def test_demo_views_fit_80_columns(dump, command):
    result = run(command, dump)
    assert result.exit_code == 0, result.stderr
    assert_fits(result.stdout)
    assert_inert(result.stdout)


def one_error(result, code: int = 1) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_bad_arguments_are_one_line_errors(tmp_path, dump):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    hostile = tmp_path / "x\x1b[31m[/x]"
    assert "neither a QMP socket" in one_error(run("ps", str(tmp_path)))
    assert "not a known VM" in one_error(run("ps", str(tmp_path / "missing")))
    assert "empty" in one_error(run("ps", str(empty)))
    assert "\\x1b[31m[/x]" in one_error(run("ps", str(hostile)))
    assert "VM@NODE" in one_error(run("ps", "web@"))
    assert "no inventory" in one_error(run("ps", "--all",
                                           CLOUDVMI_INVENTORY=str(tmp_path / "none.toml")))
    assert "not a running VM" in one_error(run("cat", dump, "/etc/passwd"))
    assert "--symbols" in one_error(run("--symbols", "/etc/hostname", "ps", dump), 2)
    assert "--symbols" in one_error(run("--symbols", str(tmp_path / "no"), "ps", dump), 2)
    assert "No such option" in one_error(run("ps", dump, "--bogus"), 2)
    assert "is a directory" in one_error(run("put", dump, str(tmp_path), "/x"), 2)
    assert "octal" in one_error(run("chmod", dump, "999", "/x"), 2)


def test_a_lab_guest_that_is_not_running(tmp_path):
    """A guest whose QEMU is gone (its state left behind) is named as not running."""
    guest = tmp_path / "run" / "gone"
    guest.mkdir(parents=True)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # a PID that no longer runs
    guest.joinpath("meta.json").write_text(json.dumps({"pid": pid, "release": "6.1"}))
    env = {"CLOUDVMI_CACHE": str(tmp_path)}
    assert "not running" in one_error(run("ps", "gone", **env))
    assert "not running" in one_error(run("lab", "console", "gone", "--", "ls", **env))


def test_bugs_are_named_and_traced_on_request(monkeypatch, dump):
    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr("cloudvmi.cli.views.render", broken)  # a bug in rendering
    line = one_error(run("ps", dump), 70)
    assert "internal error: KeyError" in line and "CLOUDVMI_DEBUG" in line
    traced = run("ps", dump, CLOUDVMI_DEBUG="1")
    assert traced.exit_code == 70 and "Traceback" in traced.stderr
    assert "Traceback" in run("--debug", "ps", dump).stderr


def test_shell_completion():
    script = run(_CLOUDVMI_COMPLETE="bash_source")
    assert "_cloudvmi_completion" in script.stdout
    words = run(COMP_WORDS="cloudvmi lab d", COMP_CWORD="2", _CLOUDVMI_COMPLETE="bash_complete")
    assert "plain,down" in words.stdout.splitlines()
    vm = run(COMP_WORDS="cloudvmi ps ", COMP_CWORD="2", _CLOUDVMI_COMPLETE="bash_complete")
    assert "file," in vm.stdout.splitlines()  # dumps and QMP sockets by path


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and re.fullmatch(r"cloudvmi, version \S+\n", result.stdout)


def test_fixed_commands_are_found_by_name():
    """Each entry of the lazily imported command table names a command of that name, and
    every command is listed (help, completion) without having been imported first."""
    from click import Context

    from cloudvmi.cli.main import FIXED, fixed_command

    for name in FIXED:
        command = fixed_command(name)
        assert command is not None and command.name == name, name
    listed = main.list_commands(Context(main))
    assert set(FIXED) <= set(listed) and {"ps", "threads", "vms"} <= set(listed)


def test_ps_of_a_dump_imports_only_what_it_uses(dump, tmp_path):
    """`cloudvmi ps DUMP --json` (manifest and profile cached): no gRPC, no rich, no write
    layer, no pyelftools, no other view module; and the same output as a cold run."""
    import subprocess
    import sys

    probe = ("import sys, runpy; sys.argv = ['cloudvmi', 'ps', sys.argv[1], '--json'];"
             "from cloudvmi.cli.main import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print('\\nMODULES', ' '.join(sorted(sys.modules)))")
    env = {**os.environ, "CLOUDVMI_CACHE": str(tmp_path)}
    outs = [subprocess.run([sys.executable, "-c", probe, dump], env=env, capture_output=True,
                           text=True, timeout=600, check=True).stdout for _ in range(2)]
    cold, warm = (out.rsplit("\nMODULES ", 1) for out in outs)
    assert cold[0] == warm[0] and json.loads(warm[0])["items"]
    modules = set(warm[1].split())
    for heavy in ("grpc", "rich", "cloudvmi.write.injector", "cloudvmi.remote.client",
                  "elftools", "cloudvmi.os.linux.typesource", "cloudvmi.control.qmp",
                  "cloudvmi.os.linux.views.sockets", "importlib.metadata"):
        assert heavy not in modules, heavy
