"""The write-ahead journal every capability records its host changes in, and `recover`.

One package for what outlives a supervisor killed with SIGKILL:

- :mod:`.store`: the durable write (temp file, fsync, rename, fsync of the
  directory) with its test-only crash-injection hook, deletion, listings,
  and the directories under the run root;
- :mod:`.record`: the record format of the device and setting journals
  (``<run>/journal/*.json``): devices, /dev/vfio nodes, kernel and systemd
  settings, a live group's step;
- :mod:`.locks`: the flock()s a journal's changes are made and undone under;
- :mod:`.liveness`: the boot id and whether a recorded process still runs;
- :mod:`.recover`: the one recovery policy (earlier boot: discard; locked or
  still in use: leave; else finish) and the :class:`~.recover.Recoverer`
  each capability registers (``handoff.session.recovery`` composes them).

It never imports a capability: capabilities import it.
"""

from handoff.journal.liveness import process_alive, process_start_time, read_boot_id
from handoff.journal.locks import Locks, group_stem, held_groups, lock_groups, lock_named
from handoff.journal.record import (
    DEVICES_AFTER_REBOOT,
    DeviceRecord,
    DeviceStep,
    Journal,
    Kind,
    NodeRecord,
    SettingKind,
    SettingRecord,
    capability_journal_name,
    capability_of,
    device_journals,
    find_journal_for,
    journal_path,
    list_journals,
    lock_journal,
)
from handoff.journal.store import CRASH_AFTER_ENV, journal_dir, list_files, locks_dir

__all__ = [
    "CRASH_AFTER_ENV",
    "DEVICES_AFTER_REBOOT",
    "DeviceRecord",
    "DeviceStep",
    "Journal",
    "Kind",
    "Locks",
    "NodeRecord",
    "SettingKind",
    "SettingRecord",
    "capability_journal_name",
    "capability_of",
    "device_journals",
    "find_journal_for",
    "group_stem",
    "held_groups",
    "journal_dir",
    "journal_path",
    "list_files",
    "list_journals",
    "lock_groups",
    "lock_journal",
    "lock_named",
    "locks_dir",
    "process_alive",
    "process_start_time",
    "read_boot_id",
]
