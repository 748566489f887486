"""The host display's write-ahead journal: ``<run>/journal/display/<profile>.json``.

Written before each step of the hand-over (:class:`handoff.display.model.Step`)
and after each is verified, so a supervisor killed at any point leaves
what `handoff recover` needs to bring the display back: the card and its
host driver, the units it stopped, the consoles and the firmware
framebuffer it unbound, the steps it began. A failed return is recorded
too (``failure``), for `handoff status` and `handoff recover` to show. A
sub-directory of the GPU journals' directory, so their listing never
reads it; same tmpfs, same boot-id rule.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handoff.display.model import Step
from handoff.errors import JournalError
from handoff.host import HostPaths
from handoff.pci import journal as jr
from handoff.pci.sysfs import read_boot_id

VERSION = 1


def display_dir(paths: HostPaths) -> Path:
    return jr.journal_dir(paths) / "display"


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
    made: list[Step] = field(default_factory=list)  # steps begun (write-ahead), in order
    failure: str | None = None  # the report of a return that failed

    @classmethod
    def begin(cls, paths: HostPaths, profile: str, card: str, driver: str | None) -> DisplayJournal:
        return cls(
            path=display_dir(paths) / f"{profile}.json",
            profile=profile,
            boot_id=read_boot_id(paths),
            supervisor_pid=os.getpid(),
            card=card,
            card_driver=driver,
        )

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if k != "path"}
        data["made"] = [s.value for s in self.made]
        data["version"] = VERSION
        return data

    @classmethod
    def load(cls, path: Path) -> DisplayJournal:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            _check_version(data)
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
                made=[Step(s) for s in data["made"]],
                failure=data.get("failure"),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise JournalError(
                f"cannot read the host display journal {path}: {exc}",
                fix="bring the display back by hand (`systemctl start display-manager`, "
                f"echo 1 > /sys/class/vtconsole/vtconN/bind), then delete {path}",
            ) from exc

    def save(self) -> None:
        """Atomically replace the file (temp, fsync, rename)."""
        directory = self.path.parent
        tmp = directory / f".{self.path.name}.tmp"
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, json.dumps(self.to_json()).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise JournalError(
                f"cannot write the host display journal {self.path}: {exc}",
                fix=f"make {directory} writable (tmpfs under the run directory)",
            ) from exc

    def begin_step(self, step: Step) -> None:
        """Write-ahead: record ``step`` before it is made."""
        if step not in self.made:
            self.made.append(step)
        self.save()

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise JournalError(
                f"cannot delete the host display journal {self.path}: {exc}",
                fix=f"delete it by hand: rm {self.path}",
            ) from exc


def _check_version(data: dict[str, Any]) -> None:
    if data.get("version") != VERSION:
        raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")


def list_display_journals(paths: HostPaths) -> list[Path]:
    try:
        return sorted(p for p in display_dir(paths).iterdir() if p.suffix == ".json")
    except FileNotFoundError:
        return []
