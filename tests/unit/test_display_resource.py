"""The host display hand-over against a fake single-GPU host and a recorded systemctl.

The resources run as the session runs them: DisplayHandover then GpuHandoff
acquired, released in reverse; `handoff recover` after a supervisor died.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoff import journal as jr
from handoff.base.errors import BindError, PreflightRefusedError
from handoff.display.journal import DisplayJournal, list_display_journals
from handoff.display.model import DisplayStep
from handoff.display.resource import DisplayHandover, display_failures
from handoff.pci.address import PciAddress
from handoff.pci.resource import GpuHandoff
from handoff.profile import HostDisplay as HostDisplaySettings
from handoff.profile import Passthrough, Profile, Vm
from handoff.session.memlock import UNLIMITED, check_memlock
from handoff.session.recovery import card_return, run_recover
from tests.unit.fakedisplay import (
    CARD,
    CARD_DRIVER,
    DM,
    DisplayHost,
    RecordedSystemd,
    set_own_cgroup,
    single_gpu_host,
)

A = PciAddress.parse
PROFILE = Profile(
    vm=Vm(name="single", memory_mib=4096),
    source=Path("single.toml"),
    passthrough=(Passthrough(address=A("0a:00.0")), Passthrough(address=A("0a:00.1"))),
    host_display=HostDisplaySettings(handover=True, stop_units=(DM,)),
)
FB = "simple-framebuffer.0"


@pytest.fixture
def display(tmp_path: Path) -> Iterator[DisplayHost]:
    fake = single_gpu_host(tmp_path)
    yield fake
    fake.host.release_blocked()


@pytest.fixture
def systemd(display: DisplayHost) -> RecordedSystemd:
    recorded = RecordedSystemd(display)
    recorded.add_display_manager()
    return recorded


def resources(
    display: DisplayHost, systemd: RecordedSystemd, lines: list[str]
) -> tuple[DisplayHandover, GpuHandoff]:
    paths = dataclasses.replace(display.paths, logind=display.paths.run / "systemd-sessions")
    screen = DisplayHandover(PROFILE, paths, writer=display, runner=systemd,
                         return_card=card_return(display.paths, display), report=lines.append,
                         environ={}, holder_wait=0.5, node_wait=0.3)
    gpu = GpuHandoff(
        PROFILE, display.paths, writer=display, report=lines.append,
        memlock_check=functools.partial(check_memlock, getrlimit=lambda _: (UNLIMITED, UNLIMITED)),
    )
    return screen, gpu


def card_driver(display: DisplayHost) -> str | None:
    return display.host.state()[CARD[5:]][0]


def host_as_before(display: DisplayHost, systemd: RecordedSystemd) -> None:
    assert card_driver(display) == CARD_DRIVER
    assert display.vtconsole_bound("vtcon1")
    assert display.fb_driver(FB) == "simple-framebuffer"
    assert systemd.units[DM].active
    assert (display.paths.dev / "dri" / "card0").exists()


def order_of(display: DisplayHost) -> list[str]:
    """The writes, named for the order checks."""
    names = []
    for path, value in display.writes:
        if path == "vtcon1/bind":
            names.append(f"vtcon1={value}")
        elif path.startswith("simple-framebuffer/"):
            names.append(path)
        elif path.endswith("driver_override") and CARD[5:] in path:
            names.append(f"override={value.strip() or '-'}")
        elif path.endswith(f"{CARD_DRIVER}/bind") or path.endswith("drivers_probe"):
            names.append("card-probe")
    return names


async def test_before_the_vm_units_consoles_framebuffer_then_the_group(
    display: DisplayHost, systemd: RecordedSystemd
) -> None:
    lines: list[str] = []
    screen, gpu = resources(display, systemd, lines)
    await screen.acquire()
    await gpu.acquire()
    assert card_driver(display) == "vfio-pci"
    assert not display.vtconsole_bound("vtcon1")
    assert display.fb_driver(FB) is None
    assert not systemd.units[DM].active
    assert ["systemctl", "stop", DM] in systemd.calls
    order = order_of(display)
    assert order.index("vtcon1=0") < order.index("simple-framebuffer/unbind")
    assert order.index("simple-framebuffer/unbind") < order.index("override=vfio-pci")
    status = screen.status()
    assert status["consoles"] == ["vtcon1"]
    assert status["framebuffer"] == FB
    assert status["units"] == [DM]


async def test_after_the_vm_card_framebuffer_consoles_then_units_in_order(
    display: DisplayHost, systemd: RecordedSystemd
) -> None:
    lines: list[str] = []
    screen, gpu = resources(display, systemd, lines)
    await screen.acquire()
    await gpu.acquire()
    await gpu.release()
    back = len(display.writes)
    await screen.release()
    after = order_of(display)[order_of(display).index("card-probe"):]
    assert after[-2:] == ["simple-framebuffer/bind", "vtcon1=1"]
    assert display.writes[back:] == [("simple-framebuffer/bind", FB), ("vtcon1/bind", "1")]
    # systemctl start came last, after the card's node was back.
    assert systemd.calls[-2:] == [["systemctl", "start", DM], ["systemctl", "is-active",
                                                               "--quiet", DM]]
    host_as_before(display, systemd)
    assert list_display_journals(display.paths) == []


async def test_each_step_is_journaled_before_it_is_made(
    display: DisplayHost, systemd: RecordedSystemd
) -> None:
    seen: dict[str, list[DisplayStep]] = {}

    def record(path: Path, value: str) -> None:
        journal = DisplayJournal.load(list_display_journals(display.paths)[0])
        seen.setdefault(f"{path.parent.name}/{path.name}", journal.made)

    display.on_write.append(record)
    screen, _ = resources(display, systemd, [])
    await screen.acquire()
    assert seen["vtcon1/bind"] == [DisplayStep.STOP_UNITS, DisplayStep.UNBIND_CONSOLES]
    assert seen["simple-framebuffer/unbind"][-1] is DisplayStep.UNBIND_FRAMEBUFFER
    journal = DisplayJournal.load(list_display_journals(display.paths)[0])
    assert journal.units == [DM]
    assert journal.consoles == ["(M) frame buffer device"]
    assert (journal.card, journal.card_driver) == (CARD, CARD_DRIVER)


async def test_inside_the_units_cgroup_it_is_refused_and_nothing_changes(
    display: DisplayHost, systemd: RecordedSystemd
) -> None:
    set_own_cgroup(display, "/system.slice/display-manager.service")
    screen, _ = resources(display, systemd, [])
    with pytest.raises(PreflightRefusedError) as refused:
        await screen.acquire()
    assert "inside display-manager.service's cgroup" in refused.value.message
    assert "systemctl start handoff@single" in (refused.value.fix or "")
    assert display.writes == []
    assert not any(call[1] in ("stop", "start") for call in systemd.calls if len(call) > 1)
    host_as_before(display, systemd)


async def test_inside_a_graphical_login_session_it_is_refused_and_nothing_changes(
    display: DisplayHost, systemd: RecordedSystemd
) -> None:
    # logind's state file of a Wayland session (/run/systemd/sessions/2) and a shell in it.
    sessions = display.paths.run / "systemd-sessions"
    sessions.mkdir()
    (sessions / "2").write_text("UID=1000\nTYPE=wayland\nSCOPE=session-2.scope\n")
    (sessions / "2.ref").write_text("")
    set_own_cgroup(display, "/user.slice/user-1000.slice/session-2.scope")
    screen, _ = resources(display, systemd, [])
    with pytest.raises(PreflightRefusedError) as refused:
        await screen.acquire()
    assert "inside a graphical session (/user.slice/user-1000.slice/session-2.scope)" in (
        refused.value.message
    )
    assert display.writes == []
    host_as_before(display, systemd)


async def test_fbcon_as_the_only_console_driver_is_refused_before_any_change(
    display: DisplayHost, systemd: RecordedSystemd
) -> None:
    import shutil

    shutil.rmtree(display.paths.sys / "class/vtconsole/vtcon0")  # no dummy console left
    screen, _ = resources(display, systemd, [])
    with pytest.raises(PreflightRefusedError) as refused:
        await screen.acquire()
    assert "the framebuffer console is the only console driver" in refused.value.message
    assert display.writes == []
    assert systemd.units[DM].active
    assert ["systemctl", "stop", DM] not in systemd.calls


async def test_a_holder_that_stays_is_named_and_the_display_is_brought_back(
    display: DisplayHost, systemd: RecordedSystemd
) -> None:
    systemd.holder_outlives_stop = True
    screen, _ = resources(display, systemd, [])
    with pytest.raises(PreflightRefusedError) as refused:
        await screen.acquire()
    assert "still in use: pid 900 (gdm) has " in refused.value.message
    assert display.writes == []  # consoles and framebuffer never touched
    assert systemd.calls[-2][:2] == ["systemctl", "start"]
    assert systemd.units[DM].active
    assert list_display_journals(display.paths) == []


async def test_a_card_the_host_driver_refuses_keeps_units_stopped_and_reports(
    display: DisplayHost, systemd: RecordedSystemd, capsys: pytest.CaptureFixture[str]
) -> None:
    lines: list[str] = []
    screen, gpu = resources(display, systemd, lines)
    await screen.acquire()
    await gpu.acquire()
    display.host.refuse_probe(CARD_DRIVER, CARD)
    with pytest.raises(BindError):
        await gpu.release()
    with pytest.raises(BindError) as failed:
        await screen.release()
    assert f"{CARD} did not come back on {CARD_DRIVER}" in failed.value.message
    assert "vendor-reset" in (failed.value.fix or "")
    assert ("0000:0a:00.0/reset", "1") in display.writes  # tried once
    assert sum(1 for w in display.writes if w[0].endswith("/reset")) == 1
    assert not systemd.units[DM].active
    assert ["systemctl", "start", DM] not in systemd.calls
    assert not display.vtconsole_bound("vtcon1")
    assert len(systemd.logged) == 1
    assert CARD in systemd.logged[0]
    assert "vendor-reset" in systemd.logged[0]
    assert screen.status()["failure"] is not None
    assert any(CARD in line and "reboot" in line for line in display_failures(display.paths))
    # The cause fixed, `handoff recover` brings everything back.
    display.host._refused_probes.clear()
    out: list[str] = []
    assert await run_recover(display.paths, display, out=out.append, runner=systemd) == 0, out
    host_as_before(display, systemd)
    assert list_display_journals(display.paths) == []
    assert jr.list_journals(display.paths) == []
    assert "returned: the host display of single (0000:0a:00.0)" in out


async def test_recover_after_the_supervisor_died_brings_the_display_back(
    display: DisplayHost, systemd: RecordedSystemd
) -> None:
    screen, gpu = resources(display, systemd, [])
    await screen.acquire()
    await gpu.acquire()
    # SIGKILL: the locks die with the process, the journals stay.
    assert screen._lock is not None
    screen._lock.release()
    assert gpu._locks is not None
    gpu._locks.release()
    out: list[str] = []
    assert await run_recover(display.paths, display, out=out.append, runner=systemd) == 0
    host_as_before(display, systemd)
    assert out[-1] == "returned: the host display of single (0000:0a:00.0)"


async def test_recover_leaves_a_live_sessions_display_alone(
    display: DisplayHost, systemd: RecordedSystemd
) -> None:
    screen, _ = resources(display, systemd, [])
    await screen.acquire()
    out: list[str] = []
    assert await run_recover(display.paths, display, out=out.append, runner=systemd) == 1
    assert any(line.startswith("left alone:") for line in out)
    assert not systemd.units[DM].active
    await screen.release()
    host_as_before(display, systemd)


def test_a_handover_profile_takes_the_display_before_the_gpu(display: DisplayHost) -> None:
    from dataclasses import replace

    from handoff.session.host_facts import gather_host_facts
    from handoff.session.plan import plan_session
    from handoff.session.supervisor import default_resources

    def names(profile: Profile) -> list[str]:
        facts = gather_host_facts(profile, display.paths, strict=False)
        plan = plan_session(profile, facts, display.paths)
        return [r.name for r in default_resources(plan, display.paths, report=print)]

    assert names(PROFILE)[:2] == ["display", "gpu"]
    assert "display" not in names(replace(PROFILE, host_display=HostDisplaySettings()))


async def test_status_without_a_session_shows_a_failed_return(
    display: DisplayHost, systemd: RecordedSystemd, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from handoff.cli.main import main

    screen, gpu = resources(display, systemd, [])
    await screen.acquire()
    await gpu.acquire()
    display.host.refuse_probe(CARD_DRIVER, CARD)
    with pytest.raises(BindError):
        await gpu.release()
    with pytest.raises(BindError):
        await screen.release()
    monkeypatch.setenv("HANDOFF_RUN_DIR", str(display.paths.run))
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"host display: single: the host display was NOT restored: {CARD} did not" in out
    assert "fix: an AMD card with the reset bug needs the vendor-reset module" in out


# --------------------------------------------------------------------------- SIGKILL at every write


class SimulatedKill(BaseException):
    """Stands for SIGKILL right after a journal write: nothing after it runs."""


#: The journal writes of a whole single-GPU session: the display's (begun, stop-units,
#: unbind-consoles, unbind-framebuffer), the GPU's (records, then detaching and on-vfio
#: for each of the card's two functions), QEMU's pid, the two functions given back.
SESSION_WRITES = 4 + 1 + 2 * 2 + 1 + 2


async def session_killed_after(
    display: DisplayHost, systemd: RecordedSystemd, monkeypatch: pytest.MonkeyPatch,
    writes: int | None,
) -> int:
    """Display then GPU acquired, QEMU noted, released in reverse, as the session does;
    "SIGKILLed" right after the ``writes``-th journal write (None: never). The writes made."""
    from handoff.journal import store

    count = 0
    real_count = store._count_write

    def count_write() -> None:
        nonlocal count
        real_count()
        count += 1
        if count == writes:
            raise SimulatedKill

    monkeypatch.setattr(store, "_count_write", count_write)
    # A killed process runs no cleanup: the display's acquire rolls back on any exception.
    real_release = DisplayHandover.release

    async def no_cleanup(self: DisplayHandover) -> None:
        return

    monkeypatch.setattr(DisplayHandover, "release", no_cleanup)
    screen, gpu = resources(display, systemd, [])
    try:
        await screen.acquire()
        await gpu.acquire()
        gpu.note_qemu_pid(999_999)  # exited: not in the fake /proc
        await gpu.release()
        await real_release(screen)
    except SimulatedKill:
        for locks in (screen._lock, gpu._locks):  # the kernel drops a dead process's flocks
            if locks is not None:
                locks.release()
    finally:
        monkeypatch.undo()
    return count


async def test_a_whole_session_makes_that_many_journal_writes(
    display: DisplayHost, systemd: RecordedSystemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await session_killed_after(display, systemd, monkeypatch, None) == SESSION_WRITES
    host_as_before(display, systemd)


@pytest.mark.parametrize("writes", range(1, SESSION_WRITES + 1))
async def test_recover_brings_the_display_back_after_a_kill_at_any_journal_write(
    display: DisplayHost, systemd: RecordedSystemd, monkeypatch: pytest.MonkeyPatch,
    writes: int,
) -> None:
    """fbcon as the kernel handles it: in the window where the consoles are unbound and
    the card has not left its driver (the GPU journal's records and first step), a bind
    write does not take; recover re-probes the card so fbcon takes the consoles again."""
    display.fbcon_rules = True
    assert await session_killed_after(display, systemd, monkeypatch, writes) == writes
    monkeypatch.setattr("handoff.display.resource.SETTLE_WAIT", 0.2)
    out: list[str] = []
    assert await run_recover(display.paths, display, out=out.append, runner=systemd) == 0, out
    host_as_before(display, systemd)
    assert list_display_journals(display.paths) == []
    assert jr.list_journals(display.paths) == []


async def test_in_the_window_the_card_is_re_probed_once_to_bring_fbcon_back(
    display: DisplayHost, systemd: RecordedSystemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    display.fbcon_rules = True
    await session_killed_after(display, systemd, monkeypatch, 5)  # the GPU's records
    assert card_driver(display) == CARD_DRIVER
    assert not display.vtconsole_bound("vtcon1")
    monkeypatch.setattr("handoff.display.resource.SETTLE_WAIT", 0.2)
    out: list[str] = []
    assert await run_recover(display.paths, display, out=out.append, runner=systemd) == 0, out
    assert any("re-probed on amdgpu-polaris so fbcon takes the consoles again" in line
               for line in out), out
    unbinds = [w for w in display.writes if w[0].endswith(f"drivers/{CARD_DRIVER}/unbind")]
    assert len(unbinds) == 1, display.writes
    host_as_before(display, systemd)
