"""Imports only point down the layers of DESIGN.md (a module may use its own layer and those
below it)."""

import ast
from pathlib import Path

import cloudvmi

# Bottom to top. The lab is a plug-in at the top (found through the `cloudvmi.finders` entry
# point), not a foundation: nothing below the CLI imports it.
LAYERS = ["errors", "paths", "config", "manifest", "capability", "stream", "memory", "control",
          "arch", "os", "write", "redirect", "interface", "vm", "remote", "lab", "apps",
          "ecosystem", "cli",
          "__init__"]


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return LAYERS.index(top)


def test_imports_point_down():
    root = Path(cloudvmi.__file__).parent
    wrong = []
    for path in root.rglob("*.py"):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        rel = path.relative_to(root.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        if module == "cloudvmi":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("cloudvmi.") and _layer(name) > _layer(module):
                    wrong.append(f"{module} imports {name}")
    assert not wrong, "\n".join(wrong)
