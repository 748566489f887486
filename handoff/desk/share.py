"""``[[share]]`` folders, decided: which virtiofsd, its command line, QEMU's part. Pure.

virtiofsd is found the way libvirt finds it: QEMU's vhost-user descriptors
(JSON files in /etc/qemu/vhost-user, then /usr/share/qemu/vhost-user; a name
in an earlier directory hides the same name in a later one; the first by
name whose ``type`` is ``fs`` wins). Debian's QEMU ships
``50-qemu-virtiofsd.json`` naming /usr/lib/qemu/virtiofsd.

Least privilege: the daemon runs as ``vm.user`` where set, else as the
folder's owner, inside a user namespace of that user (``unshare --user
--map-root-user``: the daemon's own sandbox needs "root" and gets it there,
while every file access on the host is checked as that user). It gets its
listening socket as an inherited fd (``--fd``), made by the supervisor in
QEMU's 0700 socket directory, so it needs no lock directory of its own. A
read-only share is a read-only bind mount in the daemon's mount namespace
(QEMU 7.2's virtiofsd has no read-only option). It serves one QEMU and exits
when QEMU's connection closes, so it never outlives the VM.

Guest RAM must be shared with the daemon: a memfd backend with ``share=on``
(hugetlb when ``[memory] hugepages`` is set).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from handoff.profile.model import Share
from handoff.profile.share import TAG, private_memory_args

__all__ = ["TAG", "Daemon", "choose_virtiofsd", "private_memory_args", "qemu_args",
           "socket_path"]

#: Where QEMU's vhost-user descriptors are, in precedence order.
DESCRIPTOR_DIRS = (Path("/etc/qemu/vhost-user"), Path("/usr/share/qemu/vhost-user"))
SOCKET = "virtiofs-{index}.sock"
CHARDEV = "virtiofs-{index}"


def choose_virtiofsd(descriptors: Sequence[tuple[str, str]]) -> Path | None:
    """The binary of the first ``fs`` descriptor: ``descriptors`` are (file name, text)
    pairs in precedence order (earlier directories first); names repeat only to hide."""
    seen: dict[str, str] = {}
    for name, text in descriptors:
        seen.setdefault(name, text)
    for name in sorted(seen):
        try:
            data = json.loads(seen[name])
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("type") == "fs" and data.get("binary"):
            return Path(str(data["binary"]))
    return None


def socket_path(qemu_dir: Path, index: int) -> Path:
    return qemu_dir / SOCKET.format(index=index)


def qemu_args(sockets: Sequence[tuple[Path, str]]) -> list[str]:
    """Per share: the socket chardev and ``vhost-user-fs-pci`` with the tag."""
    args: list[str] = []
    for index, (sock, tag) in enumerate(sockets):
        chardev = CHARDEV.format(index=index)
        path = str(sock).replace(",", ",,")
        args += ["-chardev", f"socket,id={chardev},path={path}",
                 "-device", f"vhost-user-fs-pci,chardev={chardev},tag={tag}"]
    return args


def _fuse_escape(value: str) -> str:
    """A value inside virtiofsd's ``-o`` list: backslash and comma escaped."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


@dataclass(frozen=True)
class Daemon:
    """How one share's virtiofsd runs: as ``uid``:``gid``, on listening socket ``fd``."""

    binary: Path
    share: Share
    uid: int
    gid: int
    fd: int

    def argv(self) -> list[str]:
        daemon = [str(self.binary), f"--fd={self.fd}", "-o",
                  f"source={_fuse_escape(str(self.share.path))}", "-o", "sandbox=namespace",
                  "-o", "cache=auto"]
        if self.share.readonly:
            # $0 is the folder: bound read-only onto itself, then the daemon.
            daemon = ["sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"',
                      str(self.share.path), *daemon]
        if self.uid == 0:
            return ["unshare", "--mount", "--", *daemon] if self.share.readonly else daemon
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--",
                "unshare", "--user", "--map-root-user", "--mount", "--", *daemon]
