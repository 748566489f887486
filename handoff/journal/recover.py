"""`handoff recover`'s one policy, and the :class:`Recoverer` each capability registers.

A journal is what a supervisor that died (SIGKILL, a crash, a power cut
without reboot) left of its host changes. For every journal of every
registered capability, in the order they were registered, the policy is:

1. unreadable: reported as FAILED and kept (a person must look at it);
2. from an earlier boot: discarded, the reboot already put the host back;
3. its locks held by a live handoff: left alone;
4. still in use (its recorded QEMU runs and holds what it records): left alone;
5. otherwise finished by the capability, which undoes each change and
   removes the journal (a change that does not go back keeps it, FAILED).

A capability says only what is its own: where its journals are, how one is
read, which locks it is undone under, when it is in use and how it is
finished. The composition (which capabilities, in which order) is
:mod:`handoff.session.recovery`'s; nothing here imports a capability.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from handoff.base.errors import HandoffError
from handoff.base.host import HostPaths
from handoff.journal.liveness import read_boot_id
from handoff.journal.locks import Locks


class Entry(Protocol):
    """What the policy needs of any capability's journal."""

    @property
    def path(self) -> Path: ...

    @property
    def boot_id(self) -> str: ...

    def remove(self) -> None: ...


J = TypeVar("J", bound=Entry)


def _never_in_use(_: Any) -> str | None:
    return None


def _every(_: Any) -> bool:
    return True


@dataclass(frozen=True)
class Recoverer(Generic[J]):
    """One capability's half of `handoff recover` (see the module docstring)."""

    name: str  # for people: "GPU hand-off", "tuning", "host display"
    journals: Callable[[], Sequence[Path]]  # the files that may be its own
    load: Callable[[Path], J]  # raises HandoffError when unreadable
    lock: Callable[[J], Locks]  # raises HandoffError when a live handoff holds them
    finish: Callable[[J], Awaitable[list[str]]]  # one line per change undone
    wants: Callable[[J], bool] = _every  # a shared directory: is this journal its own?
    in_use: Callable[[J], str | None] = _never_in_use  # why it must be left, else None
    after_reboot: str = "the reboot already put the host back"


@dataclass
class RecoveryReport:
    """What recovery did: changes undone, journals discarded, left alone, failed."""

    returned: list[str] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused and not self.failed

    def lines(self) -> list[str]:
        out = [f"returned: {note}" for note in self.returned]
        out += [f"discarded: {note}" for note in self.discarded]
        out += [f"left alone: {note}" for note in self.refused]
        out += [f"FAILED: {note}" for note in self.failed]
        return out or ["nothing to recover: no hand-off journal"]


async def recover(
    paths: HostPaths,
    recoverers: Iterable[Recoverer[Any]],
    *,
    only: Path | None = None,
    select: Callable[[Any], bool] = _every,
) -> RecoveryReport:
    """Finish every journal the ``recoverers`` own, in their order, by the policy above.

    ``only``: that one file; ``select``: among this boot's journals, only those
    it accepts (an earlier boot's journals are discarded all the same).
    """
    report = RecoveryReport()
    boot_id = read_boot_id(paths)
    unreadable: set[Path] = set()  # two capabilities sharing a directory report it once
    for recoverer in recoverers:
        await _recover_one_kind(
            recoverer, boot_id, report, unreadable, only=only, select=select
        )
    return report


async def _recover_one_kind(
    recoverer: Recoverer[J],
    boot_id: str,
    report: RecoveryReport,
    unreadable: set[Path],
    *,
    only: Path | None,
    select: Callable[[Any], bool],
) -> None:
    for path in recoverer.journals():
        if only is not None and path != only:
            continue
        try:
            journal = recoverer.load(path)
        except HandoffError as exc:
            if path not in unreadable:
                unreadable.add(path)
                report.failed.append(str(exc))
            continue
        if not recoverer.wants(journal):
            continue
        if journal.boot_id != boot_id:
            journal.remove()
            report.discarded.append(
                f"{path} is from an earlier boot ({journal.boot_id}): {recoverer.after_reboot}"
            )
            continue
        if not select(journal):
            continue
        await _finish(recoverer, journal, report)


async def _finish(recoverer: Recoverer[J], journal: J, report: RecoveryReport) -> None:
    """Undo one dead supervisor's changes under the journal's locks."""
    try:
        locks = recoverer.lock(journal)
    except HandoffError as exc:
        report.refused.append(f"{journal.path}: {exc.message}")
        return
    try:
        busy = recoverer.in_use(journal)
        if busy is not None:
            report.refused.append(f"{journal.path}: {busy}")
            return
        try:
            report.returned += await recoverer.finish(journal)
        except HandoffError as exc:
            report.failed.append(f"{journal.path}: {exc}")
    finally:
        locks.release()
