"""`pip install .` gives a working cloudvmi: the wheel holds every module and data file the
code loads (generated protobuf code, workload sources, assembly, the .proto), declares its
entry points, and runs from where it is unpacked, away from the source tree."""

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from a copy of the project (the checkout stays clean)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "cloudvmi", src / "cloudvmi",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(src)], check=True, timeout=300, capture_output=True)
    (found,) = out.glob("cloudvmi-*.whl")
    return found


def test_wheel_holds_code_and_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(["git", "ls-files", "cloudvmi"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    missing = [p for p in tracked if p not in names]
    assert not missing, f"files of the package not in the wheel: {missing}"
    for needed in ("cloudvmi/remote/proto/cloudvmi_pb2.py",
                   "cloudvmi/remote/proto/cloudvmi_pb2_grpc.py",
                   "cloudvmi/remote/proto/cloudvmi.proto", "cloudvmi/lab/workload/workload.c",
                   "cloudvmi/lab/workload/init.sh", "cloudvmi/arch/x86_64/helper.S"):
        assert needed in names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]


def test_entry_points(wheel):
    with zipfile.ZipFile(wheel) as z:
        (ep,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(z.read(ep).decode())
        meta = z.read(ep.replace("entry_points.txt", "METADATA")).decode()
    assert parser["console_scripts"]["cloudvmi"] == "cloudvmi.cli.main:main"
    assert set(parser["cloudvmi.capabilities"]) == {"views", "operations", "vm"}
    assert parser["cloudvmi.finders"]["lab"] == "cloudvmi.lab.finder"
    for extra in ("test", "dev", "volatility", "libvirt"):
        assert f"Provides-Extra: {extra}" in meta


def test_runs_from_the_unpacked_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}  # before the checkout, deps from here
    code = ("import cloudvmi, cloudvmi.remote.proto.cloudvmi_pb2_grpc as g, importlib.resources"
            " as r; print(cloudvmi.__file__); print(g.__name__);"
            " print((r.files('cloudvmi.lab') / 'workload' / 'workload.c').is_file())")
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    where, _, found = run.stdout.split("\n")[:3]
    assert where.startswith(str(site)) and found == "True"
    version = subprocess.run([sys.executable, "-m", "cloudvmi.cli.main", "--version"], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("cloudvmi, version ")
