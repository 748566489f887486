"""The capability-neutral journal: one durable writer, one recovery policy, a fixed order.

What is proven here: every capability's journal (the device/setting record and
the display's) is written by the same writer, so the crash hook stops a process
right after any of them; the recovery policy (earlier boot, locks, in use,
finish) holds for any capability that registers, including one this package
has never heard of; `handoff recover` composes the capabilities in the
documented order; and journals written before this package existed still read.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from handoff import journal as jr
from handoff.base.errors import JournalError
from handoff.base.host import HostPaths
from handoff.display.journal import DisplayJournal, display_dir
from handoff.display.model import DisplayStep
from handoff.journal import store
from handoff.journal.recover import Recoverer, recover
from handoff.pci.ops import KernelWriter
from handoff.session.recovery import recoverers

CHECKOUT = Path(__file__).resolve().parents[2]
BOOT_ID = "6c1f5a3e-0d3b-4c43-9a63-2b1c1e7f0a11"


@pytest.fixture
def paths(tmp_path: Path) -> HostPaths:
    host = HostPaths(
        sys=tmp_path / "sys", proc=tmp_path / "proc", dev=tmp_path / "dev", run=tmp_path / "run"
    )
    (host.proc / "sys/kernel/random").mkdir(parents=True)
    (host.proc / "sys/kernel/random/boot_id").write_text(BOOT_ID + "\n")
    return host


# --------------------------------------------------------------------------- one writer

# Alternates a device journal's and a display journal's writes, four in all.
INTERLEAVED = """
import sys
from pathlib import Path
from handoff import journal as jr
from handoff.display.journal import DisplayJournal
from handoff.display.model import DisplayStep
from handoff.base.errors import JournalError
from handoff.base.host import HostPaths
root = Path(sys.argv[1])
paths = HostPaths(proc=root / "proc", run=root / "run")
gpu = jr.Journal.begin(paths, "single", jr.Kind.SESSION, "single")
screen = DisplayJournal.begin(paths, "single", "0000:0a:00.0", "amdgpu")
screen.save()                                  # 1: display
gpu.devices.append(jr.DeviceRecord("0000:0a:00.0", "1002:67b0", 1, "amdgpu", "amdgpu", None))
gpu.save()                                     # 2: GPU
screen.begin_step(DisplayStep.STOP_UNITS)             # 3: display
gpu.set_step("0000:0a:00.0", jr.DeviceStep.DETACHING)  # 4: GPU
"""


def interleaved(paths: HostPaths, crash_after: int | None) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDOFF_TEST_")}
    if crash_after is not None:
        env[jr.CRASH_AFTER_ENV] = str(crash_after)
    root = paths.run.parent
    done = subprocess.run(
        [sys.executable, "-c", INTERLEAVED, str(root)], env=env, cwd=CHECKOUT, timeout=120,
        check=False,
    )
    return done.returncode


def on_disk(paths: HostPaths) -> tuple[list[str] | None, str | None]:
    """(the display journal's steps, the GPU device's step) as the files hold them."""
    screen = display_dir(paths) / "single.json"
    gpu = jr.journal_path(paths, "single")
    made = DisplayJournal.load(screen).made if screen.exists() else None
    devices = jr.Journal.load(gpu).devices if gpu.exists() else []
    return ([s.value for s in made] if made is not None else None,
            devices[0].step.value if devices else None)


@pytest.mark.parametrize(
    ("writes", "expected"),
    [
        (1, ([], None)),
        (2, ([], "host")),
        (3, (["stop-units"], "host")),
        (4, (["stop-units"], "detaching")),
    ],
)
def test_the_crash_hook_stops_the_process_after_any_capabilitys_nth_journal_write(
    paths: HostPaths, writes: int, expected: tuple[list[str] | None, str | None]
) -> None:
    assert interleaved(paths, writes) == -signal.SIGKILL
    assert on_disk(paths) == expected


def test_without_the_hook_every_write_lands(paths: HostPaths) -> None:
    assert interleaved(paths, None) == 0
    assert on_disk(paths) == (["stop-units"], "detaching")


def test_a_display_journal_is_replaced_atomically_and_private(paths: HostPaths) -> None:
    journal = DisplayJournal.begin(paths, "single", "0000:0a:00.0", "amdgpu")
    journal.begin_step(DisplayStep.STOP_UNITS)
    assert [p.name for p in display_dir(paths).iterdir()] == ["single.json"]  # no temp left
    assert journal.path.stat().st_mode & 0o777 == 0o600
    assert display_dir(paths).stat().st_mode & 0o777 == 0o700


def test_only_tmpfs_and_ramfs_skip_the_fsync(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "25 22 0:21 / /run rw,nosuid - tmpfs tmpfs rw\n"
        "26 25 0:22 / /run/disk rw - ext4 /dev/sdb1 rw\n"
    )
    assert store.volatile("/run/handoff/journal", str(mountinfo))
    assert not store.volatile("/run/disk/handoff", str(mountinfo))
    assert not store.volatile("/var/lib/handoff", str(mountinfo))


# --------------------------------------------------------------------------- one policy


@dataclass
class TpmState:
    """A capability the journal package has never heard of: an emulator's state dir."""

    path: Path
    boot_id: str
    busy: bool = False

    def remove(self) -> None:
        self.path.unlink()


def tpm_recoverer(paths: HostPaths, finished: list[str]) -> Recoverer[TpmState]:
    directory = store.journal_dir(paths) / "tpm"

    def load(path: Path) -> TpmState:
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise JournalError(f"cannot read {path}: {exc}", fix=f"rm {path}") from exc
        return TpmState(path, data["boot_id"], data.get("busy", False))

    async def finish(journal: TpmState) -> list[str]:
        finished.append(journal.path.stem)
        journal.remove()
        return [f"the TPM state of {journal.path.stem} removed"]

    return Recoverer(
        name="TPM emulator",
        journals=lambda: store.list_files(directory),
        load=load,
        lock=lambda journal: jr.lock_named(paths, f"tpm-{journal.path.stem}", "handoff recover",
                                           f"the TPM of {journal.path.stem}"),
        in_use=lambda journal: "its swtpm still runs" if journal.busy else None,
        finish=finish,
        after_reboot="the reboot cleared it",
    )


def tpm_journal(paths: HostPaths, name: str, **fields: object) -> Path:
    path = store.journal_dir(paths) / "tpm" / f"{name}.json"
    store.write_atomic(path, {"boot_id": BOOT_ID, **fields}, what="the TPM journal",
                       proc=paths.proc)
    return path


async def test_a_new_capability_gets_the_whole_policy_by_registering(paths: HostPaths) -> None:
    finished: list[str] = []
    tpm_journal(paths, "dead")
    tpm_journal(paths, "old", boot_id="another-boot")
    tpm_journal(paths, "busy", busy=True)
    tpm_journal(paths, "held")
    (store.journal_dir(paths) / "tpm" / "broken.json").write_text("{")
    with _held(paths, "tpm-held", "handoff run held"):  # a live session owns it
        report = await recover(paths, [tpm_recoverer(paths, finished)])
    assert finished == ["dead"]
    assert report.returned == ["the TPM state of dead removed"]
    assert report.discarded == [
        f"{store.journal_dir(paths) / 'tpm' / 'old.json'} is from an earlier boot "
        "(another-boot): the reboot cleared it"
    ]
    busy, held = report.refused
    assert busy.endswith("busy.json: its swtpm still runs")
    assert "held.json: another handoff" in held
    assert "(handoff run held)) holds the TPM of held" in held
    (failed,) = report.failed
    assert "broken.json" in failed
    assert not report.ok
    left = sorted(p.stem for p in store.list_files(store.journal_dir(paths) / "tpm"))
    assert left == ["broken", "busy", "held"]


@contextlib.contextmanager
def _held(paths: HostPaths, stem: str, owner: str) -> Iterator[None]:
    """A named lock held by "another session" (another open file of this process)."""
    locks = jr.lock_named(paths, stem, owner, stem)
    try:
        yield
    finally:
        locks.release()


def test_recover_composes_the_capabilities_in_the_documented_order(paths: HostPaths) -> None:
    names = [r.name for r in recoverers(paths, KernelWriter())]
    assert names == ["GPU hand-off", "live GPU", "tuning", "desk", "host display"]


# --------------------------------------------------------------------------- the format

# Written by handoff before the journal package (handoff/pci/journal.py and
# handoff/display/journal.py of that time): the format is unchanged, version 1.
OLD_DEVICE_JOURNAL = {
    "version": 1, "kind": "session", "owner": "gaming", "boot_id": BOOT_ID,
    "supervisor_pid": 4242, "qemu_pid": 4321, "qemu_start_time": 99, "live": None,
    "devices": [{"address": "0000:01:00.0", "ids": "1002:67b0", "group": 1,
                 "original_driver": "amdgpu", "original_module": "amdgpu",
                 "original_override": None, "step": "on-vfio"}],
    "nodes": [{"path": "/dev/vfio/1", "uid": 0, "gid": 0, "mode": 0o600}],
    "settings": [{"kind": "sysfs", "target": "/proc/sys/vm/nr_hugepages", "previous": "0",
                  "value": "2048", "what": "the global 2M hugepage pool"}],
    "lock": None,
}
OLD_DISPLAY_JOURNAL = {
    "profile": "single", "boot_id": BOOT_ID, "supervisor_pid": 4242, "card": "0000:0a:00.0",
    "card_driver": "amdgpu", "units": ["display-manager.service"],
    "consoles": ["(M) frame buffer device"], "framebuffer": "simple-framebuffer.0",
    "framebuffer_driver": "simple-framebuffer", "made": ["stop-units", "unbind-consoles"],
    "failure": None, "version": 1,
}


def test_journals_written_before_the_package_read_and_round_trip(paths: HostPaths) -> None:
    device = jr.journal_path(paths, "gaming")
    device.parent.mkdir(parents=True)
    device.write_text(json.dumps(OLD_DEVICE_JOURNAL))
    journal = jr.Journal.load(device)
    assert journal.devices[0].step is jr.DeviceStep.ON_VFIO
    assert journal.settings[0].kind is jr.SettingKind.SYSFS
    assert journal.to_json() == OLD_DEVICE_JOURNAL

    screen = display_dir(paths) / "single.json"
    screen.parent.mkdir(parents=True)
    screen.write_text(json.dumps(OLD_DISPLAY_JOURNAL))
    loaded = DisplayJournal.load(screen)
    assert loaded.made == [DisplayStep.STOP_UNITS, DisplayStep.UNBIND_CONSOLES]
    assert loaded.to_json() == OLD_DISPLAY_JOURNAL
