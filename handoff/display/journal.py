"""The host display's write-ahead journal: ``<run>/journal/display/<profile>.json``.

Written before each step of the hand-over (:class:`handoff.display.model.DisplayStep`)
and after each is verified, so a supervisor killed at any point leaves
what `handoff recover` needs to bring the display back: the card and its
host driver, the units it stopped, the consoles and the firmware
framebuffer it unbound, the steps it began. A failed return is recorded
too (``failure``), for `handoff status` and `handoff recover` to show. A
sub-directory of the GPU journals' directory, so their listing never
reads it; same tmpfs, same boot-id rule, the same durable writer
(:mod:`handoff.journal.store`, with its crash-injection hook).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handoff.base.host import HostPaths
from handoff.display.model import DisplayStep
from handoff.journal import store
from handoff.journal.liveness import read_boot_id

VERSION = 1
WHAT = "the host display journal"


def display_dir(paths: HostPaths) -> Path:
    return store.journal_dir(paths) / "display"


def lock_stem(profile: str) -> str:
    """The named lock (``<run>/locks/display-<profile>.lock``) a live session holds."""
    return f"display-{profile}"


@dataclass
class DisplayJournal:
    path: Path
    profile: str
    boot_id: str
    supervisor_pid: int
    card: str
    card_driver: str | None
    units: list[str] = field(default_factory=list)
    consoles: list[str] = field(default_factory=list)  # vtconsole names ("(M) frame buffer...")
    framebuffer: str | None = None  # efi-framebuffer.0
    framebuffer_driver: str | None = None
    made: list[DisplayStep] = field(default_factory=list)  # steps begun (write-ahead), in order
    failure: str | None = None  # the report of a return that failed
    proc: Path = field(default=HostPaths.proc, repr=False, compare=False)

    @classmethod
    def begin(cls, paths: HostPaths, profile: str, card: str, driver: str | None) -> DisplayJournal:
        return cls(
            path=display_dir(paths) / f"{profile}.json",
            profile=profile,
            boot_id=read_boot_id(paths),
            supervisor_pid=os.getpid(),
            card=card,
            card_driver=driver,
            proc=paths.proc,
        )

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if k not in ("path", "proc")}
        data["made"] = [s.value for s in self.made]
        data["version"] = VERSION
        return data

    @classmethod
    def load(cls, path: Path, proc: Path = HostPaths.proc) -> DisplayJournal:
        def build(data: dict[str, Any]) -> DisplayJournal:
            return cls(
                path=path,
                profile=str(data["profile"]),
                boot_id=str(data["boot_id"]),
                supervisor_pid=int(data["supervisor_pid"]),
                card=str(data["card"]),
                card_driver=data.get("card_driver"),
                units=[str(u) for u in data["units"]],
                consoles=[str(c) for c in data["consoles"]],
                framebuffer=data.get("framebuffer"),
                framebuffer_driver=data.get("framebuffer_driver"),
                made=[DisplayStep(s) for s in data["made"]],
                failure=data.get("failure"),
                proc=proc,
            )

        return store.read_record(
            path, VERSION, build, what=WHAT,
            fix="bring the display back by hand (`systemctl start display-manager`, "
            f"echo 1 > /sys/class/vtconsole/vtconN/bind), then delete {path}",
        )

    def save(self) -> None:
        """Atomically replace the file (:func:`handoff.journal.store.write_atomic`)."""
        store.write_atomic(self.path, self.to_json(), what=WHAT, proc=self.proc)

    def begin_step(self, step: DisplayStep) -> None:
        """Write-ahead: record ``step`` before it is made."""
        if step not in self.made:
            self.made.append(step)
        self.save()

    def remove(self) -> None:
        store.remove_file(self.path, what=WHAT)


def list_display_journals(paths: HostPaths) -> list[Path]:
    return store.list_files(display_dir(paths))
