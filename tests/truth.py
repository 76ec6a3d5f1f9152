"""The guest's own view of what the views rebuild (files, sockets, maps, mounts, interfaces,
environments), captured over its console by the lab's `cloudvmi-viewtruth` script.

As a script it also keeps a guest image for working on views without booting:
    python tests/truth.py VERSION DIR   ->  DIR/VERSION/{truth/, guest.elf, guest.raw}
(guest.raw: RAM with physical address == offset, for hostile edits of a copy).
"""

import base64
import io
import sys
import tarfile
from pathlib import Path


def capture(g, dest: Path) -> Path:
    """Unpack the guest's view into DEST (DEST/proc/PID/{fd,fdinfo/,maps,environ,...},
    DEST/net/{tcp,tcp6,udp,udp6,unix,ip-addr,ip-route,...})."""
    blob = g.console.check("cloudvmi-viewtruth -b", timeout=600)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(blob)), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


def main(version: str, root: str) -> None:
    import shutil
    import uuid

    from cloudvmi.control.qmp import QMP
    from cloudvmi.lab import guest as lab

    out = Path(root) / version
    g = lab.up(f"tr{uuid.uuid4().hex[:6]}", kernel=version, mem="512M")
    try:
        capture(g, out / "truth")
        with QMP(str(g.qmp_path)) as qmp:
            qmp.execute("stop")
            shutil.copyfile(g.shm_path, out / "guest.raw")
            qmp.execute("dump-guest-memory", paging=False,
                        protocol=f"file:{out / 'guest.elf'}")
    finally:
        lab.down(g.name)
    print(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
