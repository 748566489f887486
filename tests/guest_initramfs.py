"""One builder for the small Linux guests the tests boot: Debian's kernel + a busybox initramfs.

The kernel is the testbed's (the versioned linux-image package the testbed
runner unpacks into its cache). Each test brings its own ``/init`` script and
the modules it needs; the builder adds busybox, the modules with their
dependencies in ``/modules`` and their load order in ``/modules.order`` (the
init scripts load them with ``insmod``), any extra programs with their shared
libraries, and extra text files. Used by the qemu layer's TPM/agent guest
(tests/qemu/linux_guest.py) and by the testbed's nested (L2) guests.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.testbed.runner import Kernel, default_cache

#: Mount points and folders every init script here expects.
FOLDERS = ("bin", "proc", "sys", "dev", "modules")


def cached_kernel(cache: Path | None = None) -> Kernel:
    """The kernel the testbed runner already unpacked into ``cache`` (inside the testbed)."""
    (root,) = [p for p in ((cache or default_cache()) / "kernel").iterdir()
               if (p / "kernel.json").exists()]
    facts = json.loads((root / "kernel.json").read_text())
    return Kernel(facts["package"], facts["version"], facts["release"], root)


def module_files(kernel: Kernel, modules: Sequence[str]) -> list[Path]:
    """The ``.ko`` files of ``modules`` and their dependencies, in load order."""
    if not modules:
        return []
    depends = subprocess.run(
        ["modprobe", "-d", str(kernel.root), "-S", kernel.release, "-a", "--show-depends",
         *modules],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    files: dict[Path, None] = {}
    for line in depends.splitlines():
        parts = line.split()
        if parts and parts[0] == "insmod":
            files.setdefault(Path(parts[1]), None)
    return list(files)


def libraries(binary: str) -> list[Path]:
    """The shared libraries ``binary`` loads (ldd), the dynamic loader included."""
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    return [Path(m) for m in re.findall(r"(/\S+\.so[.\d]*)", out)]


def build_initramfs(
    workdir: Path,
    kernel: Kernel,
    init: str,
    *,
    modules: Sequence[str] = (),
    programs: Sequence[str] = (),
    files: Mapping[str, tuple[str, int]] | None = None,
    name: str = "l2",
) -> Path:
    """A gzip'd cpio initramfs in ``workdir`` (``<name>.gz``, mode 0644) running ``init``.

    ``programs`` are host executables copied into /bin with their libraries;
    ``files`` maps a path in the guest to its text and mode.
    """
    tree = workdir / f"{name}root"
    for sub in FOLDERS:
        (tree / sub).mkdir(parents=True)
    shutil.copy("/bin/busybox", tree / "bin" / "busybox")
    for program in programs:
        shutil.copy(program, tree / "bin" / Path(program).name)
        for library in libraries(program):
            target = tree / library.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(library, target)
    order = module_files(kernel, modules)
    for module in order:
        shutil.copy(module, tree / "modules" / module.name)
    (tree / "modules.order").write_text("".join(f"{m.name}\n" for m in order))
    for path, (text, mode) in {**(files or {}), "init": (init, 0o755)}.items():
        target = tree / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
    listing = subprocess.run(["find", "."], cwd=tree, check=True, capture_output=True).stdout
    archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=listing,
                             check=True, capture_output=True).stdout
    initrd = workdir / f"{name}.gz"
    initrd.write_bytes(gzip.compress(archive, compresslevel=1))
    os.chmod(initrd, 0o644)  # QEMU may run as vm.user
    return initrd
