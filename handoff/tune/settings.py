"""Change a kernel setting journaled, and put it back: the tuning's one way to write the host.

A setting (``nr_hugepages`` of a pool, a CPU's ``scaling_governor``) is a
kernel file with a value. :func:`change_setting` records its previous value
in the journal (write-ahead, :class:`handoff.pci.journal.SettingRecord`),
writes the new one through the same :class:`handoff.pci.ops.SysfsWriter`
the PCI engine uses, and reads it back. :func:`restore_settings` writes each
previous value back, newest first, verifies it and drops the record; it is
what a session's release and ``handoff recover`` both call.

The kernel may accept a write yet hold another value (a hugepage pool it
could not fill): the read-back is the caller's to judge for the new value
(:func:`handoff.tune.hugepages.check_raised`), and must equal the previous
value exactly when restoring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from handoff.errors import HandoffError, SysfsWriteError, TuneError
from handoff.pci import journal as jr


class SettingWriter(Protocol):
    """write(2) on a kernel file (:class:`handoff.pci.ops.KernelWriter` in production)."""

    def write(self, path: Path, value: str) -> None: ...


def read_setting(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise TuneError(
            f"cannot read {path}: {exc.strerror or exc}",
            fix="mount sysfs and procfs (handoff reads the setting before changing it)",
        ) from exc


def write_setting(writer: SettingWriter, path: Path, value: str, what: str) -> str:
    """Write ``value`` to ``path``; the value the kernel holds afterwards."""
    try:
        writer.write(path, value)
    except OSError as exc:
        raise SysfsWriteError(
            f"cannot set {what} ({path}) to {value}: {exc.strerror or exc}",
            fix="run handoff as root (it writes kernel settings for the session)",
        ) from exc
    return read_setting(path)


def change_setting(
    journal: jr.Journal, writer: SettingWriter, path: Path, value: str, what: str
) -> str:
    """Journal ``path``'s current value, then write ``value``; returns the value read back.

    A setting already recorded keeps its first previous value (a retry does
    not forget what the host had).
    """
    previous = read_setting(path)
    journal.record_setting(
        jr.SettingRecord(jr.SettingKind.SYSFS, str(path), previous, value, what)
    )
    return write_setting(writer, path, value, what)


def restore_settings(journal: jr.Journal, writer: SettingWriter) -> list[str]:
    """Every recorded setting back to its previous value, newest first, verified.

    A setting that does not go back stays in the journal (``handoff
    recover`` tries again) and a TuneError lists it after the others were
    handled. Returns one line per restored setting.
    """
    notes: list[str] = []
    failures: list[str] = []
    for record in reversed(list(journal.settings)):
        path = Path(record.target)
        try:
            now = write_setting(writer, path, record.previous, record.what)
        except HandoffError as exc:
            failures.append(exc.message)
            continue
        if now != record.previous:
            failures.append(
                f"{record.what} ({path}) reads {now} after writing back {record.previous}"
            )
            continue
        journal.drop_setting(record.target)
        notes.append(f"{record.what} back to {record.previous}")
    if failures:
        raise TuneError(
            "could not restore every host setting:\n" + "\n".join(f"  - {f}" for f in failures),
            fix=f"fix the cause, then `handoff recover` (the journal {journal.path} keeps what "
            "is left)",
        )
    return notes
