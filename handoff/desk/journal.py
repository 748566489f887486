"""The desk's write-ahead journal: ``<run>/journal/desk/<profile>.json``.

Written before a desk resource makes a file (Looking Glass's shm file) or
hands a node to QEMU's user (a passed USB device's /dev/bus/usb node: its
owner, group and mode before), and kept until that is undone, so a supervisor
killed at any point leaves what ``handoff recover`` needs: the files to
remove, the nodes to give back, the boot they belong to, and QEMU's pid (what
QEMU still uses is left until that QEMU is gone). A
sub-directory of the GPU journals' directory, so their listing never reads
it; same tmpfs, same boot-id rule, the same durable writer
(:mod:`handoff.journal.store`, with its crash-injection hook). Held under the named lock
``<run>/locks/desk-<profile>.lock`` while its session lives.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handoff import journal as jr
from handoff.base.errors import JournalError
from handoff.base.host import HostPaths
from handoff.journal import read_boot_id, store

NodeRecord = jr.NodeRecord  # path, uid, gid, mode before handoff changed them

VERSION = 1
WHAT = "the desk journal"


def desk_dir(paths: HostPaths) -> Path:
    return jr.journal_dir(paths) / "desk"


def lock_stem(profile: str) -> str:
    return f"desk-{profile}"


@dataclass
class DeskJournal:
    path: Path
    profile: str
    boot_id: str
    supervisor_pid: int
    files: list[str] = field(default_factory=list)  # made by handoff: removed after
    nodes: list[NodeRecord] = field(default_factory=list)  # chowned: given back after
    pids: list[list[int]] = field(default_factory=list)  # helpers [pid, start time]: ended
    acls: list[list[str]] = field(default_factory=list)  # [path, user] ACL entries: removed
    qemu_pid: int | None = None
    qemu_start_time: int | None = None
    proc: Path = field(default=HostPaths.proc, repr=False, compare=False)  # for write_atomic

    @classmethod
    def begin(cls, paths: HostPaths, profile: str, part: str = "") -> DeskJournal:
        """``<profile>.json`` (Looking Glass) or ``<profile>+<part>.json`` (usb, ...)."""
        name = f"{profile}+{part}" if part else profile
        return cls(desk_dir(paths) / f"{name}.json", profile, read_boot_id(paths), os.getpid(),
                   proc=paths.proc)

    @property
    def lock(self) -> str:
        """The named lock its session holds: ``desk-<profile>[+<part>]``."""
        return lock_stem(self.path.stem)

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if k not in ("path", "nodes", "proc")}
        data["nodes"] = [vars(n).copy() for n in self.nodes]
        data["version"] = VERSION
        return data

    @classmethod
    def load(cls, path: Path) -> DeskJournal:
        def build(data: dict[str, Any]) -> DeskJournal:
            return cls(
                path=path, profile=str(data["profile"]), boot_id=str(data["boot_id"]),
                supervisor_pid=int(data["supervisor_pid"]),
                files=[str(f) for f in data["files"]],
                nodes=[jr.NodeRecord(**n) for n in data.get("nodes", [])],
                pids=[[int(p), int(t)] for p, t in data.get("pids", [])],
                acls=[[str(p), str(u)] for p, u in data.get("acls", [])],
                qemu_pid=data.get("qemu_pid"), qemu_start_time=data.get("qemu_start_time"),
            )

        return store.read_record(
            path, VERSION, build, what=WHAT,
            fix=f"remove the files it names by hand (ls /dev/shm), then delete {path}",
        )

    def note_qemu(self, pid: int, start_time: int | None) -> None:
        """QEMU's pid and start time, saved: recover leaves the journal while QEMU runs
        (as :meth:`handoff.journal.record.Journal.note_qemu` does for the GPU)."""
        self.qemu_pid = pid
        self.qemu_start_time = start_time
        self.save()

    def save(self) -> None:
        """Atomically replace the file (:func:`handoff.journal.store.write_atomic`)."""
        store.write_atomic(self.path, self.to_json(), what=WHAT, proc=self.proc)

    def remove(self) -> None:
        store.remove_file(self.path, what=WHAT)


class DeskHold:
    """What a desk resource holds while its session lives: its named lock and journal.

    :meth:`take` locks ``desk-<profile>+<part>`` and begins the journal (in memory:
    the resource saves it before its first host change); :meth:`end` gives every
    recorded node and ACL back, removes the journal and releases the lock, on
    every exit path and idempotently.
    """

    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths
        self.journal: DeskJournal | None = None
        self.locks: jr.Locks | None = None

    def take(self, profile: str, part: str, what: str) -> DeskJournal:
        """The lock (held by ``handoff run <profile>``, guarding ``what``), then the journal."""
        self.locks = jr.lock_named(self.paths, lock_stem(f"{profile}+{part}" if part else profile),
                                   f"handoff run {profile}", what)
        try:
            self.journal = DeskJournal.begin(self.paths, profile, part)
        except BaseException:
            self.end()
            raise
        return self.journal

    def note_qemu_pid(self, pid: int) -> None:
        if self.journal is not None:
            self.journal.note_qemu(pid, jr.process_start_time(self.paths, pid))

    def end(self) -> None:
        if self.journal is not None:
            give_back(self.journal)
            self.journal.remove()
            self.journal = None
        if self.locks is not None:
            self.locks.release()
            self.locks = None


def list_desk_journals(paths: HostPaths) -> list[Path]:
    try:
        return sorted(p for p in desk_dir(paths).iterdir() if p.suffix == ".json")
    except FileNotFoundError:
        return []


def remove_acl(path: str, user: str) -> bool:
    """``setfacl -x u:USER PATH``; False when the path is gone (nothing to undo)."""
    if not os.path.lexists(path):
        return False
    result = subprocess.run(["setfacl", "-x", f"u:{user}", path], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise JournalError(f"cannot remove {user}'s ACL entry from {path}: "
                           f"{result.stderr.strip()}", fix=f"setfacl -x u:{user} {path}")
    return True


def give_back(journal: DeskJournal) -> list[str]:
    """Every recorded node back to its owner and mode (a node gone since is done), every
    ACL entry handoff added removed (newest first)."""
    done = []
    for path, user in reversed(journal.acls):
        if remove_acl(path, user):
            done.append(f"{user}'s access to {path}")
    journal.acls = []
    for node in journal.nodes:
        try:
            os.chown(node.path, node.uid, node.gid, follow_symlinks=False)
            os.chmod(node.path, node.mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise JournalError(
                f"cannot give {node.path} back to {node.uid}:{node.gid}: {exc.strerror}",
                fix=f"chown {node.uid}:{node.gid} {node.path}; chmod {node.mode:o} {node.path}",
            ) from exc
        done.append(node.path)
    journal.nodes = []
    return done


def end_helpers(paths: HostPaths, journal: DeskJournal) -> list[str]:
    """SIGKILL every recorded helper (virtiofsd) still running (same pid and start time)."""
    done = []
    for pid, start in journal.pids:
        if jr.process_alive(paths, pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                done.append(f"helper pid {pid}")
    journal.pids = []
    return done


def remove_files(journal: DeskJournal, paths: HostPaths | None = None) -> list[str]:
    """End the helpers, remove every file the journal names (a missing one is already
    done), give every node back; then the journal."""
    done = end_helpers(paths, journal) if paths is not None else []
    done += give_back(journal)
    for name in journal.files:
        try:
            os.unlink(name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise JournalError(f"cannot remove {name}: {exc.strerror}",
                               fix=f"remove it by hand: rm {name}") from exc
        done.append(name)
    journal.remove()
    return done
