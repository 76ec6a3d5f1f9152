"""Build the lab guest's initramfs: busybox-static, the workload program, the init script."""

import gzip
import hashlib
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from cloudvmi.errors import CloudVMIError, MissingDependency
from cloudvmi.lab.kernels import LabKernel
from cloudvmi.lab.paths import sub

BUSYBOX = Path("/bin/busybox")
# The C compiler that builds the workload for each guest architecture, and its apt package.
COMPILERS = {"x86_64": ("gcc", "gcc libc6-dev"),
             "arm64": ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu libc6-dev-arm64-cross")}


TOOLS = ("procview", "viewtruth")  # shell scripts installed as /bin/cloudvmi-NAME


def _workload_source() -> tuple[bytes, bytes, dict[str, bytes]]:
    pkg = resources.files("cloudvmi.lab") / "workload"
    return ((pkg / "workload.c").read_bytes(), (pkg / "init.sh").read_bytes(),
            {name: (pkg / f"{name}.sh").read_bytes() for name in TOOLS})


def _check_busybox() -> None:
    if not BUSYBOX.exists():
        raise MissingDependency(
            "busybox-static is needed for lab guests: apt-get install busybox-static")
    if b"ld-linux" in BUSYBOX.read_bytes()[:8192]:
        raise MissingDependency(f"{BUSYBOX} is dynamically linked: apt-get install busybox-static")


def _busybox(arch: str) -> Path:
    """The static busybox for ARCH: the host's own for x86-64, else the binary inside
    Debian's busybox-static package of that architecture."""
    if arch == "x86_64":
        _check_busybox()
        return BUSYBOX
    from cloudvmi.lab.kernels import download

    deb = download("busybox-static", arch)
    out = sub("busybox") / f"{deb.stem}"
    if not out.exists():
        import tarfile

        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                              stdout=subprocess.PIPE) as proc, \
                tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if member.name.lstrip("./") in ("bin/busybox", "usr/bin/busybox"):
                    tmp = out.with_suffix(".tmp")
                    tmp.write_bytes(tar.extractfile(member).read())
                    tmp.chmod(0o755)
                    tmp.rename(out)
                    break
    if not out.exists():
        raise CloudVMIError(f"no busybox binary in {deb.name}")
    return out


def build(kernel: LabKernel) -> Path:
    """Return a cached initramfs for this kernel, building it when its inputs changed."""
    busybox = _busybox(kernel.arch)
    source, init, tools = _workload_source()
    digest = hashlib.sha256(source + init + b"".join(tools.values()) + busybox.read_bytes())
    for mod in kernel.modules:
        digest.update(mod.read_bytes())
    out = sub("initramfs") / (f"{kernel.version}-{kernel.flavour}-{kernel.arch}-"
                               f"{digest.hexdigest()[:16]}.cpio.gz")
    if out.exists():
        return out
    cc, cc_packages = COMPILERS[kernel.arch]
    if shutil.which(cc) is None:
        raise MissingDependency(
            f"{cc} is needed to build the lab workload: apt-get install {cc_packages}")
    if shutil.which("cpio") is None:
        raise MissingDependency("cpio is needed to pack the initramfs: apt-get install cpio")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "run", "lib/modules", "etc"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(busybox, root / "bin" / "busybox")
        # Another architecture's busybox cannot run here: init installs its applets itself
        # (`busybox --install -s`), the shell that runs init is linked here.
        applets = (subprocess.run([str(busybox), "--list"], capture_output=True, text=True,
                                  check=True).stdout.split() if kernel.arch == "x86_64"
                   else ["sh"])
        for applet in applets:
            link = root / "bin" / applet
            if not link.exists():
                link.symlink_to("busybox")
        src = Path(tmp) / "workload.c"
        src.write_bytes(source)
        proc = subprocess.run(
            [cc, "-static", "-O2", "-pthread", "-o", str(root / "bin" / "workload"), str(src)],
            capture_output=True, text=True)
        if proc.returncode != 0:
            raise MissingDependency(f"building the workload failed (apt-get install "
                                    f"{cc_packages}): {proc.stderr[-1000:]}")
        (root / "init").write_bytes(init)
        (root / "init").chmod(0o755)
        for name, script in tools.items():
            (root / "bin" / f"cloudvmi-{name}").write_bytes(script)
            (root / "bin" / f"cloudvmi-{name}").chmod(0o755)
        for mod in kernel.modules:
            shutil.copy2(mod, root / "lib" / "modules" / mod.name)
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
        names = subprocess.run(["find", ".", "-mindepth", "1"], cwd=root, capture_output=True,
                               check=True).stdout
        packed = subprocess.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"], cwd=root,
                                input=names, capture_output=True)
        if packed.returncode != 0:
            raise CloudVMIError(f"cpio failed: {packed.stderr.decode()[-500:]}")
        tmp_out = out.with_suffix(".tmp")
        tmp_out.write_bytes(gzip.compress(packed.stdout, 6))
        tmp_out.rename(out)
    return out
