"""The supervisor in-process against a real QEMU: every exit path ends with QEMU gone,
resources released in reverse order and the run directory removed.

Stops are driven through the real control socket; signals to the real CLI are
covered in test_cli_session.py. The HostResource here is a recording test
double of the *resource* interface (not of QEMU or QMP, which are real).
"""

from __future__ import annotations

import os
import pwd
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from handoff.base.errors import HandoffError, QemuLaunchError, SessionBusyError
from handoff.base.host import HostPaths
from handoff.control import server as control
from handoff.profile import Profile, load_profile
from handoff.session.end import ExitStatus
from handoff.session.ladder import LadderTimeouts
from handoff.session.resources import ControlRegistry, HostResource, JsonObject, VmHandle
from handoff.session.rundir import RunDir, qemu_socket_dir
from handoff.session.supervisor import Outcome, Phase, Session
from tests.host_requirements import is_root, requires

from .conftest import (
    PANIC_BOOT_SECTOR,
    pid_gone,
    write_boot_disk,
    write_power_off_disk,
    write_profile,
)

pytestmark = pytest.mark.qemu


class ResourceFailedError(HandoffError):
    pass


@dataclass
class RecordingResource:
    """A HostResource that records every call the session makes into a shared journal."""

    name: str
    journal: list[str]
    fail_acquire: bool = False
    fail_in_task: bool = False
    memlock_bytes: int | None = None
    pid: int | None = None
    seen_status: list[object] = field(default_factory=list)

    async def acquire(self) -> None:
        self.journal.append(f"acquire {self.name}")
        if self.fail_acquire:
            raise ResourceFailedError(f"{self.name} cannot be acquired", fix="test")

    def note_qemu_pid(self, pid: int) -> None:
        self.pid = pid
        self.journal.append(f"pid {self.name}")

    async def vm_started(
        self, vm: VmHandle, nursery: trio.Nursery, control: ControlRegistry
    ) -> None:
        self.journal.append(f"started {self.name}")
        self.seen_status.append(await vm.execute("query-status"))

        async def echo(message: Mapping[str, Any]) -> JsonObject:
            return {"echo": message.get("text"), "by": self.name}

        control.register(f"echo-{self.name}", echo)
        if self.fail_in_task:

            async def crash() -> None:
                await trio.lowlevel.checkpoint()
                raise ResourceFailedError(f"{self.name}'s task failed")

            nursery.start_soon(crash)

    async def release(self) -> None:
        self.journal.append(f"release {self.name}")

    def status(self) -> JsonObject:
        return {"held": True, "pid": self.pid}


class Lines:
    """Collects the session's status lines; lets a test wait for one."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = trio.Event()

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, pattern: str) -> str:
        """The first line matching ``pattern`` (callers bound the wait with fail_after)."""
        while True:
            for line in self.lines:
                if re.search(pattern, line):
                    return line
            await self._changed.wait()

    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Harness:
    profile: Profile
    paths: HostPaths
    journal: list[str]
    lines: Lines

    def session(self, resources: Sequence[HostResource] = (), **kwargs: Any) -> Session:
        return Session(
            self.profile, self.paths, resources, report=self.lines, handle_signals=False,
            **kwargs,
        )

    @property
    def run_dir(self) -> Path:
        return self.paths.session_dir(self.profile.name)

    async def ask(self, message: Mapping[str, Any]) -> JsonObject:
        sock = self.run_dir / "control.sock"
        return await trio.to_thread.run_sync(lambda: control.request(sock, message))


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    profile = load_profile(write_profile(tmp_path, "s", shutdown_timeout=0.5))
    return Harness(profile, HostPaths(run=tmp_path / "run"), [], Lines())


async def drive(harness: Harness, session: Session, action: Any) -> Outcome:
    """Run the session; once it is running, await ``action()``; return the outcome."""
    outcome: list[Outcome] = []

    async def runner() -> None:
        outcome.append(await session.run())

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner)
            await harness.lines.wait_for("^running")
            await action()
    return outcome[0]


def assert_clean_end(harness: Harness, qemu_pid: int | None) -> None:
    assert not harness.run_dir.exists(), "the run directory was not removed"
    if qemu_pid is not None:
        assert pid_gone(qemu_pid), "QEMU still exists"


def qemu_pid_of(harness: Harness) -> int:
    line = next(x for x in harness.lines.lines if x.startswith("QEMU started"))
    match = re.search(r"pid (\d+)", line)
    assert match is not None
    return int(match[1])


async def test_a_session_starts_reports_each_phase_and_answers_status(
    harness: Harness,
) -> None:
    resources = [RecordingResource("gpu", harness.journal), RecordingResource("input",
                                                                               harness.journal)]
    session = harness.session(resources)

    async def check() -> None:
        assert os.stat(harness.run_dir).st_mode & 0o777 == 0o700
        status = await harness.ask({"command": "status"})
        assert status["profile"] == "s"
        assert status["phase"] == "running"
        assert status["pid"] == os.getpid()
        assert status["qemu_pid"] == qemu_pid_of(harness)
        assert status["accel"] == "tcg"
        assert status["resources"] == {
            "gpu": {"held": True, "pid": status["qemu_pid"]},
            "input": {"held": True, "pid": status["qemu_pid"]},
        }
        echoed = await harness.ask({"command": "echo-input", "text": "hi"})
        assert echoed == {"echo": "hi", "by": "input"}
        await harness.ask({"command": "stop", "force": True})

    outcome = await drive(harness, session, check)
    assert outcome.status == ExitStatus.OK
    lines = harness.lines.lines
    assert lines[0].startswith("preflight ok: accelerator tcg")
    assert [x.split(",")[0] for x in lines[1:5]] == [
        "acquired gpu", "acquired input", "QEMU started", "QMP connected",
    ]
    # QEMU's RESUME event (printed by the event task) and the supervisor's own
    # "running" line (printed once `cont` returns) come from two tasks: both
    # follow "QMP connected", in either order.
    assert {lines[5].split(" (")[0], lines[6].split(" (")[0]} == {
        "RESUME: the VM runs", "running",
    }
    # vm_started ran before the guest was resumed: QEMU was still paused.
    assert resources[0].seen_status[0] == {
        "status": "prelaunch", "singlestep": False, "running": False,
    }
    assert session.phase is Phase.ENDED


async def test_stop_force_quits_qemu_through_qmp_and_exits_zero(harness: Harness) -> None:
    resources = [RecordingResource(n, harness.journal) for n in ("a", "b", "c")]
    session = harness.session(resources)

    async def stop() -> None:
        assert await harness.ask({"command": "stop", "force": True}) == {
            "stopping": True, "force": True,
        }

    outcome = await drive(harness, session, stop)
    assert outcome.status == ExitStatus.OK
    assert outcome.summary == "stopped on request; QEMU exited with status 0"
    assert "SHUTDOWN by the host (reason: host-qmp-quit)" in harness.lines.lines
    assert "asking the guest" not in harness.lines.text()
    assert harness.journal == [
        "acquire a", "acquire b", "acquire c", "pid a", "pid b", "pid c",
        "started a", "started b", "started c", "release c", "release b", "release a",
    ]
    assert_clean_end(harness, qemu_pid_of(harness))


async def test_a_guest_that_ignores_powerdown_falls_through_to_quit(harness: Harness) -> None:
    # SeaBIOS alone never answers the ACPI power button.
    session = harness.session([RecordingResource("a", harness.journal)])

    async def stop() -> None:
        await harness.ask({"command": "stop"})

    start = trio.current_time()
    outcome = await drive(harness, session, stop)
    assert trio.current_time() - start < 15
    text = harness.lines.text()
    assert "asking the guest to power off (up to 0.5 s)" in text
    assert "the guest did not power off within 0.5 s" in text
    assert "asking QEMU to quit" in text
    assert "SIGTERM" not in text
    assert outcome.status == ExitStatus.OK
    assert harness.journal[-1] == "release a"
    assert_clean_end(harness, qemu_pid_of(harness))


async def test_a_guest_that_powers_off_ends_the_session_with_zero(tmp_path: Path) -> None:
    disk = write_power_off_disk(tmp_path / "off.img")
    profile = load_profile(write_profile(tmp_path, "off", disk=disk))
    lines = Lines()
    journal: list[str] = []
    session = Session(profile, HostPaths(run=tmp_path / "run"),
                      [RecordingResource("a", journal)], report=lines, handle_signals=False)
    with trio.fail_after(60):
        outcome = await session.run()
    assert outcome == Outcome(ExitStatus.OK, "the guest powered off", 0, "")
    assert "SHUTDOWN by the guest (reason: guest-shutdown)" in lines.lines
    assert journal[-1] == "release a"
    assert not (tmp_path / "run" / "off").exists()


async def test_a_guest_panic_is_reported_and_ends_abnormally(tmp_path: Path) -> None:
    disk = write_boot_disk(tmp_path / "panic.img", PANIC_BOOT_SECTOR)
    profile = load_profile(
        write_profile(tmp_path, "panic", disk=disk, extra_args=("-device", "pvpanic"))
    )
    lines = Lines()
    session = Session(profile, HostPaths(run=tmp_path / "run"), [], report=lines,
                      handle_signals=False)
    with trio.fail_after(60):
        outcome = await session.run()
    assert outcome.status == ExitStatus.ABNORMAL
    assert outcome.summary == "the guest panicked; QEMU exited with status 0"
    assert "GUEST_PANICKED: the guest kernel panicked" in lines.lines
    assert "SHUTDOWN by the guest (reason: guest-panic)" in lines.lines
    assert not (tmp_path / "run" / "panic").exists()


async def test_qemu_killed_with_sigkill_is_reported_as_a_crash(harness: Harness) -> None:
    journal = harness.journal
    session = harness.session([RecordingResource("a", journal), RecordingResource("b", journal)])

    async def kill() -> None:
        os.kill(qemu_pid_of(harness), signal.SIGKILL)

    outcome = await drive(harness, session, kill)
    assert outcome.status == ExitStatus.ABNORMAL
    assert outcome.qemu_returncode == -signal.SIGKILL
    assert "was killed by SIGKILL" in outcome.summary
    assert "crashed or was killed" in outcome.summary
    assert journal[-2:] == ["release b", "release a"]
    assert_clean_end(harness, qemu_pid_of(harness))


async def test_a_wedged_qemu_is_taken_down_by_every_rung_of_the_ladder(
    harness: Harness,
) -> None:
    # A stopped (SIGSTOP) QEMU answers nothing and cannot act on SIGTERM:
    # only SIGKILL ends it, and each rung must give up within its bound.
    timeouts = LadderTimeouts(powerdown=0.3, quit=0.3, sigterm=0.3, sigkill=20)
    session = harness.session([RecordingResource("a", harness.journal)], timeouts=timeouts)

    async def wedge_and_stop() -> None:
        os.kill(qemu_pid_of(harness), signal.SIGSTOP)
        await harness.ask({"command": "stop"})

    start = trio.current_time()
    outcome = await drive(harness, session, wedge_and_stop)
    assert trio.current_time() - start < 15
    text = harness.lines.text()
    for rung in (
        "asking the guest to power off (up to 0.3 s)",
        "the guest did not power off within 0.3 s",
        "asking QEMU to quit (up to 0.3 s)",
        "sending QEMU SIGTERM (up to 0.3 s)",
        "sending QEMU SIGKILL (up to 20 s)",
    ):
        assert rung in text
    assert outcome.status == ExitStatus.ABNORMAL
    assert outcome.qemu_returncode == -signal.SIGKILL
    assert "had to be killed" in outcome.summary
    assert harness.journal[-1] == "release a"
    assert_clean_end(harness, qemu_pid_of(harness))


@requires(is_root(), "switching QEMU's user needs root")
async def test_qemu_runs_as_the_profiles_unprivileged_user(tmp_path: Path) -> None:
    profile = load_profile(write_profile(tmp_path, "user", user="nobody"))
    harness = Harness(profile, HostPaths(run=tmp_path / "run"), [], Lines())

    async def check() -> None:
        pid = qemu_pid_of(harness)
        info = os.stat(f"/proc/{pid}")  # /proc/PID belongs to the process's euid
        assert info.st_uid == pwd.getpwnam("nobody").pw_uid
        await harness.ask({"command": "stop", "force": True})

    outcome = await drive(harness, harness.session(), check)
    assert outcome.status == ExitStatus.OK
    assert_clean_end(harness, qemu_pid_of(harness))


async def test_a_failing_acquire_starts_no_qemu_and_releases_earlier_resources(
    harness: Harness,
) -> None:
    journal = harness.journal
    resources = [
        RecordingResource("first", journal),
        RecordingResource("second", journal),
        RecordingResource("broken", journal, fail_acquire=True),
        RecordingResource("never", journal),
    ]
    with trio.fail_after(30), pytest.raises(ResourceFailedError, match="broken cannot be"):
        await harness.session(resources).run()
    assert journal == [
        "acquire first", "acquire second", "acquire broken", "release second", "release first",
    ]
    assert not any(x.startswith("QEMU started") for x in harness.lines.lines)
    assert_clean_end(harness, None)


async def test_a_failing_resource_task_stops_qemu_and_still_releases_everything(
    harness: Harness,
) -> None:
    journal = harness.journal
    resources = [RecordingResource("a", journal), RecordingResource("b", journal,
                                                                    fail_in_task=True)]
    with trio.fail_after(60), pytest.raises(ResourceFailedError, match="b's task failed"):
        await harness.session(resources).run()
    assert journal[-2:] == ["release b", "release a"]
    assert_clean_end(harness, qemu_pid_of(harness))


async def test_a_launch_failure_shows_exit_code_command_and_log_tail(tmp_path: Path) -> None:
    profile = load_profile(write_profile(tmp_path, "bad", extra_args=("-no-such-flag",)))
    journal: list[str] = []
    lines = Lines()
    session = Session(profile, HostPaths(run=tmp_path / "run"),
                      [RecordingResource("a", journal)], report=lines, handle_signals=False)
    with trio.fail_after(30), pytest.raises(QemuLaunchError) as caught:
        await session.run()
    message = caught.value.message
    assert message.startswith("QEMU exited with status 1 before its monitor answered")
    assert re.search(r"command: qemu-system-x86_64 .*-no-such-flag", message)
    assert "invalid option" in message
    assert caught.value.fix
    assert journal == ["acquire a", "pid a", "release a"]
    assert not (tmp_path / "run" / "bad").exists()


async def test_a_profile_cannot_run_twice(harness: Harness) -> None:
    held = RunDir.acquire(harness.paths, harness.profile.name)
    try:
        with pytest.raises(SessionBusyError) as caught:
            await harness.session([RecordingResource("a", harness.journal)]).run()
    finally:
        held.release()
    assert f"already running (pid {os.getpid()} holds" in caught.value.message
    assert "handoff stop s" in (caught.value.fix or "")
    assert harness.journal == []


async def test_a_stop_during_startup_ends_before_the_guest_runs(harness: Harness) -> None:
    journal = harness.journal

    entered = trio.Event()

    class SlowResource(RecordingResource):
        async def acquire(self) -> None:
            await super().acquire()
            entered.set()
            await trio.sleep_forever()

    session = harness.session([RecordingResource("a", journal), SlowResource("slow", journal)])
    outcome: list[Outcome] = []

    async def runner() -> None:
        outcome.append(await session.run())

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner)
            await entered.wait()
            await harness.ask({"command": "stop"})
    assert outcome[0].status == ExitStatus.OK
    assert "before the VM ran" in outcome[0].summary
    assert journal == ["acquire a", "acquire slow", "release a"]
    assert_clean_end(harness, None)


async def test_unknown_control_commands_are_refused_with_the_known_ones(
    harness: Harness,
) -> None:
    session = harness.session()

    async def ask() -> None:
        with pytest.raises(control.ControlRequestError) as caught:
            await harness.ask({"command": "dance"})
        assert caught.value.message == "unknown command 'dance'"
        assert caught.value.fix == "known commands: status, stop"
        await harness.ask({"command": "stop", "force": True})

    assert (await drive(harness, session, ask)).status == ExitStatus.OK


async def test_ladder_bounds_come_from_the_profile_and_passthrough_count(
    harness: Harness,
) -> None:
    timeouts = LadderTimeouts.for_profile(harness.profile)
    assert timeouts == LadderTimeouts(powerdown=0.5, quit=30.0, sigterm=10.0, sigkill=60.0)


# --------------------------------------------------------------------------- QEMU dying at start


async def test_qemu_dying_during_the_qmp_handshake_ends_with_its_status_and_log(
    tmp_path: Path,
) -> None:
    # QEMU greets on its monitor, then fails to realize a device and exits.
    extra = ("-device", "virtio-input-host-pci,evdev=/nonexistent")
    profile = load_profile(write_profile(tmp_path, "dies", extra_args=extra))
    lines = Lines()
    session = Session(profile, HostPaths(run=tmp_path / "run"), [], report=lines,
                      handle_signals=False)
    with trio.fail_after(30), pytest.raises(QemuLaunchError) as caught:
        await session.run()
    message = caught.value.message
    assert message.startswith("QEMU exited with status 1 before its monitor answered")
    assert "Could not open '/nonexistent'" in message
    assert caught.value.fix is not None
    assert not (tmp_path / "run" / "dies").exists()


def traversable_run_root() -> Path:
    """A run root every user may pass through (pytest's tmp_path is root's 0700)."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="handoff-user-"))
    root.chmod(0o755)
    return root / "run"


def qmp_input_profile(directory: Path, name: str) -> Profile:
    path = write_profile(directory, name, user="nobody")
    path.write_text(
        path.read_text()
        + '[input]\nbackend = "qmp"\ndevices = ["name:no such keyboard on this host"]\n'
    )
    return load_profile(path)


@requires(is_root(), "switching QEMU's user needs root")
async def test_qemu_as_an_unprivileged_user_creates_and_serves_its_input_monitor(
    tmp_path: Path,
) -> None:
    import shutil

    from handoff.input.resource import InputHandoff

    profile = qmp_input_profile(tmp_path, "userqmp")
    paths = HostPaths(run=traversable_run_root())
    harness = Harness(profile, paths, [], Lines())
    nobody = pwd.getpwnam("nobody").pw_uid

    async def check() -> None:
        monitor = qemu_socket_dir(paths, profile.name) / "input.qmp"
        assert os.stat(f"/proc/{qemu_pid_of(harness)}").st_uid == nobody
        assert monitor.is_socket(), "QEMU created the input monitor in its socket directory"
        assert monitor.stat().st_uid == nobody
        assert (await harness.ask({"command": "switch", "mode": "host"}))["mode"] == "host"
        await harness.ask({"command": "stop", "force": True})

    try:
        outcome = await drive(harness, harness.session([InputHandoff(profile, paths)]), check)
        assert outcome.status == ExitStatus.OK
        assert "released input" in harness.lines.text()
        assert_clean_end(harness, qemu_pid_of(harness))
    finally:
        shutil.rmtree(paths.run.parent, ignore_errors=True)


@requires(is_root(), "switching QEMU's user needs root")
async def test_qemus_user_refused_its_socket_path_gets_a_fix_that_is_not_the_profile(
    tmp_path: Path,
) -> None:
    from handoff.input.resource import InputHandoff

    # The run root under pytest's 0700 tmp dir: nobody cannot reach its socket directory there.
    profile = qmp_input_profile(tmp_path, "userdenied")
    paths = HostPaths(run=tmp_path / "run")
    session = Session(profile, paths, [InputHandoff(profile, paths)], report=Lines(),
                      handle_signals=False)
    with trio.fail_after(30), pytest.raises(QemuLaunchError) as caught:
        await session.run()
    assert "before its monitor answered" in caught.value.message
    assert "Permission denied" in caught.value.message
    fix = caught.value.fix or ""
    assert "fix the profile" not in fix
    assert "searchable by nobody" in fix
    assert not (tmp_path / "run" / "userdenied").exists()


@dataclass
class MonitorDiesResource:
    """A resource whose own QEMU connection fails because QEMU died (as the input monitor's)."""

    name: str = "input"
    memlock_bytes: int | None = None

    async def acquire(self) -> None:
        return None

    def note_qemu_pid(self, pid: int) -> None:
        return None

    async def vm_started(
        self, vm: VmHandle, nursery: trio.Nursery, control: ControlRegistry
    ) -> None:
        os.kill(vm.pid, signal.SIGKILL)  # QEMU dies between the two monitors' handshakes
        raise ResourceFailedError("QEMU's input monitor closed during the handshake")

    async def release(self) -> None:
        return None

    def status(self) -> JsonObject:
        return {}


async def test_qemu_dying_during_a_resources_monitor_handshake_reports_qemus_death(
    tmp_path: Path,
) -> None:
    profile = load_profile(write_profile(tmp_path, "diesinput"))
    session = Session(profile, HostPaths(run=tmp_path / "run"), [MonitorDiesResource()],
                      report=Lines(), handle_signals=False)
    with trio.fail_after(30), pytest.raises(QemuLaunchError) as caught:
        await session.run()
    message = caught.value.message
    assert message.startswith("QEMU was killed by SIGKILL before its monitor answered")
    assert "input: QEMU's input monitor closed during the handshake" in message
    assert "fix the profile" not in (caught.value.fix or "")
    assert not (tmp_path / "run" / "diesinput").exists()


def test_preflight_checks_the_input_backends_devices_against_qemu_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The virtio proxies are in the plan's argv, so a QEMU without them is refused up front."""
    import dataclasses

    from handoff.base.errors import QemuUnsupportedError
    from handoff.qemu.capabilities import probe
    from handoff.qemu.probe_cache import QemuCapabilities
    from handoff.session import start as session_module

    real = probe("qemu-system-x86_64")  # the real binary's answers, minus one device

    def without_virtio_input(binary: str) -> QemuCapabilities:
        return dataclasses.replace(real, devices=real.devices - {"virtio-input-host-pci"})

    path = write_profile(tmp_path, "novirtio")
    path.write_text(path.read_text() + '[input]\nbackend = "virtio"\n')
    profile = load_profile(path)
    paths = HostPaths(run=tmp_path / "run")
    assert session_module.preflight(profile, paths).plan.devices[-2:] == (
        "virtio-input-host-pci", "virtio-input-host-pci",
    )
    monkeypatch.setattr(session_module, "probe", without_virtio_input)
    with pytest.raises(QemuUnsupportedError, match="'virtio-input-host-pci'"):
        session_module.preflight(profile, paths)
    assert not paths.run.exists(), "preflight changes nothing"
