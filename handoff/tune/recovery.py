"""The tuning's part of `handoff recover`: host settings a dead supervisor changed, put back.

A tuning journal (``<run>/journal/<profile>+tune.json``, under the named
lock ``tune-<profile>``) records each setting's previous value before it
was changed: hugepage pools, CPU governors, systemd units' AllowedCPUs=.
Finished by :func:`handoff.tune.settings.restore_settings`, newest first,
verified, by :mod:`handoff.journal.recover`'s policy (earlier boot:
discarded, the reboot reset them; locked: left; its recorded QEMU still
running, holding the pages: left).
"""

from __future__ import annotations

from pathlib import Path

from handoff import journal as jr
from handoff.base.host import HostPaths
from handoff.journal.recover import Recoverer, RecoveryReport, recover
from handoff.tune.settings import SettingWriter, Systemd, restore_settings

#: The capability tag of a tuning journal's name (``<profile>+tune``).
TAG = "tune"


def tune_journal_name(profile_name: str) -> str:
    """``<name>+tune``: "+" is not allowed in a profile name, so no other journal has it."""
    return jr.capability_journal_name(profile_name, TAG)


def tune_lock_stem(profile_name: str) -> str:
    return f"tune-{profile_name}"


def tune_journals(paths: HostPaths) -> list[Path]:
    return [p for p in jr.list_journals(paths) if jr.capability_of(p) == TAG]


def _in_use(paths: HostPaths, journal: jr.Journal) -> str | None:
    pid = journal.qemu_pid
    if pid is None or not jr.process_alive(paths, pid, journal.qemu_start_time):
        return None
    return (
        f"its QEMU (pid {pid}) is still running and uses what was tuned for it; stop it "
        f"(`kill {pid}`), then run `handoff recover` again"
    )


def tuning_recoverer(
    paths: HostPaths, writer: SettingWriter, systemd: Systemd | None = None
) -> Recoverer[jr.Journal]:
    """The tuning's recoverer: every ``+tune`` journal's settings back, then the file gone."""

    async def finish(journal: jr.Journal) -> list[str]:
        notes = restore_settings(journal, writer, systemd or Systemd(paths))
        journal.remove()
        return notes

    return Recoverer(
        name="tuning",
        journals=lambda: tune_journals(paths),
        load=lambda path: jr.Journal.load(path, paths.proc),
        lock=lambda journal: jr.lock_journal(paths, journal, "handoff recover"),
        in_use=lambda journal: _in_use(paths, journal),
        finish=finish,
        after_reboot="the reboot already reset every setting to its boot value",
    )


async def recover_tuning(
    paths: HostPaths,
    writer: SettingWriter,
    systemd: Systemd | None = None,
    *,
    only: Path | None = None,
) -> RecoveryReport:
    """Finish the tuning journals alone (a session's acquire: its profile's ``only``)."""
    return await recover(paths, [tuning_recoverer(paths, writer, systemd)], only=only)
