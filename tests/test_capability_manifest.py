"""The capability manifest: after a full load, a fresh process finds a capability by
importing only the module that declares it; a manifest whose fingerprint no longer holds
(a declaring module changed) is not used, and the registry loads in full again."""

import json
import os
import subprocess
import sys

PROBE = """
import sys
from cloudvmi import capability
cap = capability.command("linux", sys.argv[1])
print(cap.key if cap else None, capability._loaded,
      "cloudvmi.os.linux.views.sockets" in sys.modules)
"""


def _ask(tmp_path, command: str) -> list[str]:
    env = {**os.environ, "CLOUDVMI_CACHE": str(tmp_path)}
    return subprocess.run([sys.executable, "-c", PROBE, command], env=env, check=True,
                          capture_output=True, text=True, timeout=300).stdout.split()


def test_one_capability_imports_one_module(tmp_path):
    assert _ask(tmp_path, "ps") == ["linux.processes", "True", "True"]  # full load, written
    manifest = json.loads((tmp_path / "capabilities.json").read_text())
    assert manifest["modules"]["linux.processes"] == "cloudvmi.os.linux.views.processes"
    assert manifest["commands"]["linux ps"] == "linux.processes"
    assert _ask(tmp_path, "ps") == ["linux.processes", "False", "False"]
    assert _ask(tmp_path, "sockets") == ["linux.sockets", "False", "True"]
    assert _ask(tmp_path, "no-such-view") == ["None", "True", "True"]


def test_a_stale_manifest_is_not_used(tmp_path):
    _ask(tmp_path, "ps")
    path = tmp_path / "capabilities.json"
    manifest = json.loads(path.read_text())
    module = next(p for p in manifest["stamps"] if p.endswith("processes.py"))
    manifest["stamps"][module][0] -= 1  # as if the module had changed since
    manifest["modules"]["linux.processes"] = "cloudvmi.os.linux.views.sockets"
    path.write_text(json.dumps(manifest))
    assert _ask(tmp_path, "ps") == ["linux.processes", "True", "True"]
    assert json.loads(path.read_text())["modules"]["linux.processes"] == \
        "cloudvmi.os.linux.views.processes"  # written anew


def test_a_wrong_manifest_still_finds_the_capability(tmp_path):
    """A manifest that points at the wrong module (but whose stamps hold) costs a full load,
    never a wrong answer."""
    _ask(tmp_path, "ps")
    path = tmp_path / "capabilities.json"
    manifest = json.loads(path.read_text())
    manifest["modules"]["linux.processes"] = "cloudvmi.os.linux.views.modules"
    path.write_text(json.dumps(manifest))
    assert _ask(tmp_path, "ps") == ["linux.processes", "True", "True"]
