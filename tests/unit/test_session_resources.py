"""A session acquires exactly the host resources its profile asks for, GPU first; the
shutdown ladder's bounds and their timing (trio's MockClock, a process stand-in)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

from handoff.base.host import HostPaths
from handoff.profile import Profile, parse_profile
from handoff.session.host_facts import gather_host_facts
from handoff.session.ladder import LadderTimeouts, Rung, shutdown_ladder
from handoff.session.plan import plan_session
from handoff.session.supervisor import Session, default_resources

BASE = """
[vm]
name = "t"
memory = "1G"
"""


def _resources(extra: str, tmp_path: Path) -> list[str]:
    profile = parse_profile(BASE + extra, tmp_path / "t.toml")
    paths = HostPaths(run=tmp_path / "run")
    plan = plan_session(profile, gather_host_facts(profile, paths, strict=False), paths)
    return [r.name for r in default_resources(plan, paths)]


def test_a_profile_without_passthrough_or_input_changes_nothing_on_the_host(
    tmp_path: Path,
) -> None:
    assert _resources("", tmp_path) == []


def test_passthrough_alone_brings_the_gpu_resource(tmp_path: Path) -> None:
    assert _resources('[[passthrough]]\naddress = "01:00.0"\n', tmp_path) == ["gpu"]


def test_input_alone_brings_the_input_resource(tmp_path: Path) -> None:
    assert _resources('[input]\nbackend = "qmp"\n', tmp_path) == ["input"]


def test_gpu_is_acquired_before_input_so_input_is_released_first(tmp_path: Path) -> None:
    extra = '[[passthrough]]\naddress = "01:00.0"\n[input]\nbackend = "virtio"\n'
    assert _resources(extra, tmp_path) == ["gpu", "input"]


# --------------------------------------------------------------------------- the shutdown ladder


def _profile_with_devices(count: int, tmp_path: Path, shutdown_timeout: int = 120) -> Profile:
    entries = "".join(f'[[passthrough]]\naddress = "0{n + 1}:00.0"\n' for n in range(count))
    text = BASE + f"shutdown_timeout = {shutdown_timeout}\n" + entries
    return parse_profile(text, tmp_path / "t.toml")


@pytest.mark.parametrize(("devices", "sigterm"), [(0, 10.0), (1, 12.0), (3, 16.0)])
def test_the_sigterm_rung_allows_10_s_plus_2_s_per_passthrough_device(
    tmp_path: Path, devices: int, sigterm: float
) -> None:
    profile = _profile_with_devices(devices, tmp_path)
    expected = LadderTimeouts(powerdown=120, quit=30, sigterm=sigterm, sigkill=60)
    assert LadderTimeouts.for_profile(profile) == expected
    session = Session(profile, HostPaths(run=tmp_path / "run"), [], handle_signals=False)
    assert session.timeouts == expected


class StubbornQemu:
    """A process (for the ladder's timing only) that exits ``exit_after_sigterm`` s after
    SIGTERM (None: never) and at once on SIGKILL; it records the signals with the time."""

    def __init__(self, exit_after_sigterm: float | None) -> None:
        self.exit_after_sigterm = exit_after_sigterm
        self.pid = 4242
        self.returncode: int | None = None
        self.signals: list[tuple[str, float]] = []
        self._exit_at: float | None = None
        self._changed = trio.Event()

    async def wait(self) -> int:
        while self.returncode is None:
            changed = self._changed
            with trio.move_on_at(self._exit_at if self._exit_at is not None else math.inf):
                await changed.wait()
            if self.returncode is None and self._exit_at is not None and (
                trio.current_time() >= self._exit_at
            ):
                self.returncode = 0
        return self.returncode

    def terminate(self) -> None:
        self.signals.append(("SIGTERM", trio.current_time()))
        if self.exit_after_sigterm is not None:
            self._exit_at = trio.current_time() + self.exit_after_sigterm
        self._poke()

    def kill(self) -> None:
        self.signals.append(("SIGKILL", trio.current_time()))
        self.returncode = -9
        self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


class DeafMonitor:
    """A QMP that accepts every command and does nothing; records them with the time."""

    connected = True

    def __init__(self) -> None:
        self.commands: list[tuple[str, float]] = []

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> object:
        self.commands.append((command, trio.current_time()))
        return {}


async def _climb(
    qemu: StubbornQemu, timeouts: LadderTimeouts, grace: trio.CancelScope | None
) -> tuple[list[tuple[Rung, float]], DeafMonitor]:
    rungs: list[tuple[Rung, float]] = []
    monitor = DeafMonitor()
    await shutdown_ladder(
        qemu, monitor, timeouts, grace=grace, report=lambda _: None,
        on_rung=lambda rung: rungs.append((rung, trio.current_time())),
    )
    return rungs, monitor


async def test_each_rung_waits_its_bound_then_the_next_acts(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    timeouts = LadderTimeouts.for_profile(_profile_with_devices(3, tmp_path))
    qemu = StubbornQemu(exit_after_sigterm=None)
    rungs, monitor = await _climb(qemu, timeouts, trio.CancelScope())
    # 120 s for the guest, 30 s for quit, 10 + 3 x 2 s after SIGTERM, then SIGKILL.
    assert rungs == [
        (Rung.POWERDOWN, 0), (Rung.QUIT, 120), (Rung.SIGTERM, 150), (Rung.SIGKILL, 166),
    ]
    assert monitor.commands == [("system_powerdown", 0), ("quit", 120)]
    assert qemu.signals == [("SIGTERM", 150), ("SIGKILL", 166)]
    assert qemu.returncode == -9


@pytest.mark.parametrize(("devices", "killed"), [(3, False), (0, True)])
async def test_a_device_reset_slower_than_10_s_is_waited_for_only_with_its_allowance(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, devices: int, killed: bool
) -> None:
    # QEMU needs 15 s after SIGTERM (a GPU reset): 3 devices give it 16 s, none 10 s.
    timeouts = LadderTimeouts.for_profile(_profile_with_devices(devices, tmp_path))
    qemu = StubbornQemu(exit_after_sigterm=15)
    rungs, _ = await _climb(qemu, timeouts, trio.CancelScope())
    assert [rung for rung, _ in rungs][-1] is (Rung.SIGKILL if killed else Rung.SIGTERM)
    assert qemu.returncode == (-9 if killed else 0)


async def test_cancelling_the_grace_skips_to_quit_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    timeouts = LadderTimeouts.for_profile(_profile_with_devices(0, tmp_path))
    qemu = StubbornQemu(exit_after_sigterm=1)
    grace = trio.CancelScope()
    async with trio.open_nursery() as nursery:

        async def second_ctrl_c() -> None:
            await trio.sleep(5)
            grace.cancel()

        nursery.start_soon(second_ctrl_c)
        rungs, _ = await _climb(qemu, timeouts, grace)
    assert rungs == [(Rung.POWERDOWN, 0), (Rung.QUIT, 5), (Rung.SIGTERM, 35)]
    assert qemu.signals == [("SIGTERM", 35)]


async def test_without_grace_the_ladder_starts_at_quit(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    timeouts = LadderTimeouts.for_profile(_profile_with_devices(0, tmp_path))
    qemu = StubbornQemu(exit_after_sigterm=1)
    rungs, monitor = await _climb(qemu, timeouts, None)
    assert rungs == [(Rung.QUIT, 0), (Rung.SIGTERM, 30)]
    assert monitor.commands == [("quit", 0)]
