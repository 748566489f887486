"""``[[share]]`` TOML → :class:`~handoff.profile.model.Share` entries. Pure.

Read through :meth:`handoff.profile.reader.Reader.fields` with
:data:`SHARE_KEYS`. Refused here: no path or tag, a tag that is not a
mount-safe word of at most 36 bytes, a tag used twice, and a share beside
vm.extra_args that give guest RAM a backend of their own (virtiofsd must map
guest RAM: it has to be the shared memfd handoff sets up). The folder's
existence is a host fact (:mod:`handoff.desk.virtiofsd` checks it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from handoff.profile.model import SECTION_KEYS, Share, Vm
from handoff.profile.reader import Custom, FieldParser, File, Reader, Text, required, show

#: virtio-fs's tag is at most 36 bytes; keep it to what a mount command takes unquoted.
TAG = re.compile(r"^[A-Za-z0-9_.-]{1,36}$")


def private_memory_args(extra_args: Sequence[str]) -> str | None:
    """An argument of vm.extra_args that gives guest RAM a backend of its own (private
    or file memory virtiofsd cannot map), or None."""
    for arg in extra_args:
        if arg in ("-mem-path", "-mem-prealloc") or "memory-backend" in arg:
            return arg
    return None


def _tag(r: Reader, t: Mapping[str, Any], prefix: str, key: str, default: Any) -> str:
    required(r, t, prefix, key, "the name the guest mounts it by",
             'add tag = "games" (in the guest: mount -t virtiofs games /mnt)')
    tag: str = Text(TAG, expected='1-36 characters from A-Z a-z 0-9 "_" "." "-"',
                    fix='write tag = "games"').read(r, t, prefix, key, default)
    return tag


def _path(r: Reader, t: Mapping[str, Any], prefix: str, key: str, default: Any) -> Any:
    required(r, t, prefix, key, "the host folder to share", 'add path = "/srv/games"')
    return File().read(r, t, prefix, key, default)


SHARE_KEYS: Mapping[str, FieldParser] = {"path": Custom(_path), "tag": Custom(_tag)}


def parse_shares(r: Reader, data: Mapping[str, Any], vm: Vm) -> tuple[Share, ...]:
    shares: list[Share] = []
    tags: dict[str, str] = {}
    for index, t in enumerate(r.array_of_tables(data, "share")):
        prefix = f"share[{index}]"
        r.check_keys(t, prefix, SECTION_KEYS["share"])
        share = Share(**r.fields(t, prefix, Share, SHARE_KEYS, {"path": None, "tag": ""}))
        if share.tag in tags:
            raise r.error(f"{prefix}.tag", f"found {show(share.tag)} again; {tags[share.tag]} "
                          "uses it", "give each [[share]] a tag of its own")
        tags[share.tag] = prefix
        shares.append(share)
    private = private_memory_args(vm.extra_args) if shares else None
    if private is not None:
        raise r.error(
            "vm.extra_args",
            f"found {show(private)} with [[share]]; virtiofsd maps guest RAM, which must be "
            "the shared memory handoff sets up, not a backend of extra_args",
            f"remove {show(private)} from vm.extra_args ([memory] hugepages gives shared "
            "hugetlb RAM), or remove the [[share]]",
        )
    return tuple(shares)
