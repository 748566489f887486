"""The flock()s a journal's changes are made and undone under, in ``<run>/locks/``.

A live session holds the locks of what it changed (one per IOMMU group for
devices, a named one for a tuning or a display journal); `handoff recover`
takes the same locks, so it never touches what a live handoff owns. Each
lock file records ``<pid> <owner>`` (:mod:`handoff.session.rundir`'s helpers, as a
run directory's lock does). The kernel drops a flock when its holder dies,
so a lock that cannot be taken always means a live process owns it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from handoff.base.errors import PreflightRefusedError
from handoff.base.host import HostPaths
from handoff.journal.store import locks_dir
from handoff.session.rundir import flock_nowait, read_holder, record_holder


class Locks:
    """flock()s held together (a journal's groups, or one named lock); released at once."""

    def __init__(self, fds: dict[str, int]) -> None:
        self._fds = fds

    @property
    def stems(self) -> tuple[str, ...]:
        return tuple(sorted(self._fds))

    def release(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = {}


def group_stem(group: int) -> str:
    """``iommu-group-N``: the lock of one IOMMU group."""
    return f"iommu-group-{group}"


def _take(
    paths: HostPaths, stem: str, owner: str, refusal: Callable[[str, Path], str]
) -> int:
    """One lock, recorded as ours, or a refusal naming its holder."""
    directory = locks_dir(paths)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path: Path = directory / f"{stem}.lock"
    fd = flock_nowait(path)
    if fd is None:
        holder = read_holder(path)
        who = holder.describe() if holder is not None else "unknown pid"
        raise PreflightRefusedError(
            refusal(who, path),
            fix="stop that session first (`handoff status`), or wait for it to end",
        )
    record_holder(fd, owner)
    return fd


def lock_groups(paths: HostPaths, groups: Iterable[int], owner: str) -> Locks:
    """Take every IOMMU group's lock without waiting, or refuse naming the holder."""
    taken: dict[str, int] = {}

    def refusal(group: int) -> Callable[[str, Path], str]:
        return lambda who, path: (
            f"refusing the hand-off: another handoff ({who}) holds IOMMU group {group} "
            f"(lock {path})"
        )

    try:
        for group in sorted(set(groups)):
            taken[group_stem(group)] = _take(paths, group_stem(group), owner, refusal(group))
    except BaseException:
        Locks(taken).release()
        raise
    return Locks(taken)


def lock_named(paths: HostPaths, stem: str, owner: str, what: str) -> Locks:
    """Take ``<run>/locks/<stem>.lock`` without waiting, or refuse naming its holder."""
    fd = _take(
        paths, stem, owner, lambda who, path: f"another handoff ({who}) holds {what} (lock {path})"
    )
    return Locks({stem: fd})


@contextlib.contextmanager
def held_groups(paths: HostPaths, groups: Iterable[int], owner: str) -> Iterator[Locks]:
    locks = lock_groups(paths, groups, owner)
    try:
        yield locks
    finally:
        locks.release()
