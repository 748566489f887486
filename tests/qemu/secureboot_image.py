"""Boot disks made of Debian's signed boot chain, for the Secure Boot test.

``signed``: a GPT disk whose EFI system partition holds the removable-media
boot path of Debian's Secure Boot chain, every piece from its Debian package:

* ``EFI/BOOT/BOOTX64.EFI``: shim, signed by Microsoft's UEFI CA (shim-signed,
  ``shimx64.efi.signed``); it carries Debian's CA and checks what it loads;
* ``EFI/BOOT/grubx64.efi``: GRUB signed by Debian (grub-efi-amd64-signed),
  the name shim loads next to itself; ``EFI/BOOT/mmx64.efi``: MokManager
  (shim-helpers-amd64-signed), which shim starts when a check fails. No
  ``fbx64.efi``: shim would run the fallback (boot-entry maker) first;
* ``EFI/debian/grub.cfg``: the signed GRUB is a monolithic image whose
  prefix is ``/EFI/debian``; it reads ``$prefix/grub.cfg`` (a copy sits in
  ``EFI/BOOT`` too, its ``$cmdpath`` fallback);
* ``/vmlinuz``: the Debian kernel (linux-image-amd64's image package, signed
  by Debian; GRUB asks shim to verify it), and ``/initrd.img``: busybox and
  efivarfs.ko, whose init prints the SecureBoot variable and powers off.

``unsigned``: the same partition with ``BOOTX64.EFI`` replaced by
grub-efi-amd64-bin's monolithic ``grubx64.efi``, the very image Debian signs
(the signed file is it plus the signature): a firmware enforcing Secure Boot
must refuse it.

No root and no loop mounts: the FAT file system is made with mtools
(``mformat``/``mmd``/``mcopy``) in a file, the GPT with ``sfdisk`` on the disk
file, and the partition written at its offset. The disks are cached under the
testbed cache, keyed on the packages' versions and this file, so the suite
builds them once per machine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.testbed import runner

SHIM = Path("/usr/lib/shim/shimx64.efi.signed")
MOKMANAGER = Path("/usr/lib/shim/mmx64.efi.signed")
SIGNED_GRUB = Path("/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed")
UNSIGNED_GRUB = Path("/usr/lib/grub/x86_64-efi/monolithic/grubx64.efi")
PACKAGES = ("shim-signed", "shim-helpers-amd64-signed", "grub-efi-amd64-signed",
            "grub-efi-amd64-bin", "mtools", "fdisk", "busybox-static")  # fmt: skip
BUSYBOX = Path("/bin/busybox")

#: What the guest prints: the SecureBoot variable's bytes (decimal, the 5th is the
#: value), the kernel's "secureboot: Secure boot ..." line, then a done marker.
SB_MARKER = "HANDOFF-SECUREBOOT="
DONE_MARKER = "HANDOFF-GUEST-DONE"
EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
insmod /efivarfs.ko
mount -t efivarfs efivarfs /sys/firmware/efi/efivars
var=/sys/firmware/efi/efivars/SecureBoot-{EFI_GLOBAL}
# 4 bytes of attributes, then the value: 1 = Secure Boot on (efivarfs cannot seek).
echo "{SB_MARKER}$(cat $var | hexdump -v -e '1/1 "%u "')" > /dev/console
dmesg | grep -i "secure boot" > /dev/console
echo "{DONE_MARKER}" > /dev/console
poweroff -f
"""

GRUB_CFG = """set timeout=0
set default=0
menuentry "handoff secure boot test" {
    linux /vmlinuz console=ttyS0 panic=-1 quiet loglevel=4
    initrd /initrd.img
}
"""

_ESP_SECTORS = 2048 * 60  # 60 MiB
_ESP_OFFSET = 1 << 20


@dataclass(frozen=True)
class BootDisks:
    signed: Path
    unsigned: Path


def missing_packages() -> list[str]:
    return [
        p for p in PACKAGES
        if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                          text=True, check=False).stdout != "install ok installed"
    ]  # fmt: skip


def _versions() -> str:
    out = subprocess.run(
        ["dpkg-query", "-W", *PACKAGES], capture_output=True, text=True, check=True
    ).stdout
    return out + Path(__file__).read_text()


def _initrd(kernel: runner.Kernel) -> bytes:
    """A newc cpio (gzip) with busybox, efivarfs.ko and the init script."""
    efivarfs = next(
        (kernel.root / "lib" / "modules" / kernel.release).rglob("efivarfs.ko*")
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "proc", "sys", "dev"):
            (root / d).mkdir()
        shutil.copy(BUSYBOX, root / "bin" / "busybox")
        (root / "init").write_text(INIT)
        (root / "init").chmod(0o755)
        shutil.copy(efivarfs, root / "efivarfs.ko")
        names = "\n".join(str(p.relative_to(root)) for p in sorted(root.rglob("*"))) + "\n"
        cpio = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], input=names.encode(), cwd=root,
            capture_output=True, check=True,
        ).stdout  # fmt: skip
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz:
        gz.write(cpio)
    return buffer.getvalue()


def _mtools(*argv: str) -> None:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    subprocess.run(argv, check=True, capture_output=True, env=env)


def _disk(path: Path, work: Path, loader: Path, with_shim: bool, kernel: runner.Kernel,
          initrd: bytes) -> None:  # fmt: skip
    esp = work / f"{path.name}.esp"
    esp.unlink(missing_ok=True)
    _mtools("mformat", "-i", str(esp), "-C", "-T", str(_ESP_SECTORS), "-h", "64", "-s", "32",
            "-v", "HANDOFFESP", "::")  # fmt: skip
    _mtools("mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT", "::/EFI/debian")
    cfg = work / "grub.cfg"
    cfg.write_text(GRUB_CFG)
    (work / "initrd.img").write_bytes(initrd)
    files = [
        (cfg, "::/EFI/debian/grub.cfg"),
        (cfg, "::/EFI/BOOT/grub.cfg"),
        (kernel.vmlinuz, "::/vmlinuz"),
        (work / "initrd.img", "::/initrd.img"),
    ]
    if with_shim:
        files += [(SHIM, "::/EFI/BOOT/BOOTX64.EFI"), (loader, "::/EFI/BOOT/grubx64.efi"),
                  (MOKMANAGER, "::/EFI/BOOT/mmx64.efi")]  # fmt: skip
    else:
        files.append((loader, "::/EFI/BOOT/BOOTX64.EFI"))
    for source, target in files:
        _mtools("mcopy", "-i", str(esp), str(source), target)
    size = _ESP_OFFSET + _ESP_SECTORS * 512 + _ESP_OFFSET
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.truncate(size)
    subprocess.run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(tmp)],
        input=f"label: gpt\nstart=2048, size={_ESP_SECTORS}, type=U, name=ESP\n",
        text=True, check=True, capture_output=True,
    )  # fmt: skip
    with open(tmp, "r+b") as f:
        f.seek(_ESP_OFFSET)
        f.write(esp.read_bytes())
    esp.unlink()
    os.replace(tmp, path)


def ensure_boot_disks(cache: Path | None = None) -> BootDisks:
    """The signed and unsigned disks, built once per set of package versions."""
    cache = runner.default_cache() if cache is None else cache
    with runner.cache_lock(cache):
        kernel = runner.ensure_kernel(cache)
        key = hashlib.sha256((_versions() + kernel.version).encode()).hexdigest()[:16]
        where = cache / "secureboot" / key
        disks = BootDisks(where / "signed.img", where / "unsigned.img")
        if disks.signed.exists() and disks.unsigned.exists():
            return disks
        where.mkdir(parents=True, exist_ok=True)
        initrd = _initrd(kernel)
        with tempfile.TemporaryDirectory(dir=where) as tmp:
            _disk(disks.signed, Path(tmp), SIGNED_GRUB, True, kernel, initrd)
            _disk(disks.unsigned, Path(tmp), UNSIGNED_GRUB, False, kernel, initrd)
        return disks
