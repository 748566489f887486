"""The plan decides, the resources execute: the GPU and display hand-overs are the plan's.

``handoff run`` reads the passthrough groups once (``HostFacts.gpu``), the
session plan decides the hand-off from that read (which devices move, from
which driver, in which order), ``--dry-run``/``handoff argv`` print it, and
the GPU and display resources are built from that very object. At acquire
the GPU resource reads the groups again under their locks only to check
them: a difference refuses with what changed, and nothing is touched. The
host display hand-over alike: the plan decides the consoles and the firmware
framebuffer it unbinds and the units it stops (those that run at acquire)
from ``HostFacts.display``; the resource unbinds exactly those.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from handoff import journal as jr
from handoff.base.errors import PreflightRefusedError
from handoff.base.host import HostPaths
from handoff.cli.main import _print_plan
from handoff.display.journal import list_display_journals
from handoff.display.resource import DisplayHandover, Restorer
from handoff.input.resource import InputHandoff
from handoff.live.resource import LiveGpu
from handoff.pci.engine import Engine
from handoff.pci.resource import GpuHandoff
from handoff.profile import Accelerator, parse_profile
from handoff.session.host_facts import gather_host_facts
from handoff.session.memlock import UNLIMITED, check_memlock
from handoff.session.plan import ChangeKind, HostFacts, QemuOwner, SessionPlan, plan_session
from handoff.session.recovery import card_return
from handoff.session.start import default_resources
from tests.unit.fakedisplay import DM, DisplayHost, RecordedSystemd, single_gpu_host
from tests.unit.fakesysfs import FakeHost, seed_machine

SOURCE = Path("/etc/handoff/gaming.toml")
# Only the GPU is named: the plan adds its audio function, the rest of IOMMU group 1.
GPU_ONLY = (
    '[vm]\nname = "gaming"\nmemory = "64M"\ncpus = 1\naccel = "tcg"\n'
    '[input]\nbackend = "none"\n[[passthrough]]\naddress = "01:00.0"\n'
)
BEFORE = {"01:00.0": ("amdgpu", "(null)"), "01:00.1": ("snd_hda_intel", "(null)")}


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    fake = seed_machine(tmp_path, vfio_loaded=True)
    yield fake
    fake.release_blocked()


def planned(host: FakeHost, text: str = GPU_ONLY) -> SessionPlan:
    profile = parse_profile(text, SOURCE)
    return plan_session(profile, gather_host_facts(profile, host.paths, strict=False), host.paths)


def gpu_resource(plan: SessionPlan, host: FakeHost, lines: list[str]) -> GpuHandoff:
    """The GPU resource exactly as the session builds it, on the fake host's driver core."""
    (gpu,) = [r for r in default_resources(plan, host.paths, report=lines.append)
              if isinstance(r, GpuHandoff)]
    gpu.engine = Engine(host.paths, host)
    gpu._memlock_check = functools.partial(check_memlock, getrlimit=lambda _: (UNLIMITED,) * 2)
    return gpu


def group_1(host: FakeHost) -> dict[str, tuple[str | None, str | None]]:
    state = host.state()
    return {a: state[a] for a in BEFORE}


def moved_to_vfio(host: FakeHost) -> list[str]:
    """The addresses whose driver_override was set to vfio-pci, in the order written."""
    return [path.split("/")[-2] for path, value in host.writes
            if path.endswith("driver_override") and value == "vfio-pci"]


def test_the_gpu_resource_moves_exactly_what_the_plan_prints(
    host: FakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = planned(host)
    assert plan.gpu is not None
    moves = [c.target for c in plan.changes if c.kind is ChangeKind.DEVICE_TO_VFIO]
    assert moves == [str(d.address) for d in plan.gpu.detach_order]
    assert sorted(moves) == ["0000:01:00.0", "0000:01:00.1"]  # the co-member planned too
    _print_plan(plan)  # what `handoff run --dry-run` and `handoff argv` print
    printed = capsys.readouterr().err.splitlines()
    for change in plan.changes:
        assert f"handoff: would: {change.describe()}" in printed
    audio = next(c for c in plan.changes if c.target == "0000:01:00.1")
    assert audio.detail.startswith("snd_hda_intel -> vfio-pci (IOMMU group 1, a co-member")

    lines: list[str] = []
    gpu = gpu_resource(plan, host, lines)
    trio.run(gpu.acquire)
    try:
        assert gpu.plan is plan.gpu  # executed as planned, not planned again
        assert moved_to_vfio(host) == moves
        assert lines[0] == "GPU hand-off plan:\n" + plan.gpu.render()
        assert group_1(host) == {a: ("vfio-pci", "vfio-pci") for a in BEFORE}
    finally:
        trio.run(gpu.release)
    assert group_1(host) == BEFORE


def test_a_driver_changed_after_the_plan_refuses_naming_it_and_changes_nothing(
    host: FakeHost,
) -> None:
    plan = planned(host)
    host.write(host.paths.sys / "bus/pci/drivers/snd_hda_intel/unbind", "0000:01:00.1")
    writes = len(host.writes)
    gpu = gpu_resource(plan, host, [])
    with pytest.raises(PreflightRefusedError) as refused:
        trio.run(gpu.acquire)
    assert "the host changed after the session was planned" in refused.value.message
    assert ("01:00.1 was on snd_hda_intel when the session was planned, is on no driver now"
            in refused.value.message)
    assert "run the session again" in (refused.value.fix or "")
    assert host.writes[writes:] == []  # nothing touched
    assert jr.list_journals(host.paths) == []
    assert group_1(host) == {"01:00.0": ("amdgpu", "(null)"), "01:00.1": (None, "(null)")}


def test_the_plans_refusal_is_the_resources_refusal(host: FakeHost) -> None:
    # The SATA controller shares IOMMU group 13 with the LPC bridge and SMBus.
    plan = planned(host, GPU_ONLY.replace("01:00.0", "00:1f.2"))
    assert plan.gpu is None
    assert isinstance(plan.gpu_refusal, PreflightRefusedError)
    gpu = gpu_resource(plan, host, [])
    with pytest.raises(PreflightRefusedError) as refused:
        trio.run(gpu.acquire)
    assert refused.value is plan.gpu_refusal
    assert host.writes == []


def test_a_device_not_on_this_host_is_printed_as_named_and_refused_at_acquire(
    host: FakeHost,
) -> None:
    """`handoff argv` for another machine still prints the entry; `run` refuses it."""
    plan = planned(host, GPU_ONLY.replace("01:00.0", "0a:00.0"))
    assert plan.gpu is None
    assert plan.gpu_refusal is not None
    assert "0000:0a:00.0 does not exist on this host" in plan.gpu_refusal.message
    (move,) = [c for c in plan.changes if c.kind is ChangeKind.DEVICE_TO_VFIO]
    assert move.detail == "to vfio-pci with its IOMMU group; back to its driver afterwards"
    with pytest.raises(PreflightRefusedError) as refused:
        trio.run(gpu_resource(plan, host, []).acquire)
    assert refused.value is plan.gpu_refusal


# --------------------------------------------------------------------------- the host display

HANDOVER = (
    '[vm]\nname = "single"\nmemory = "64M"\ncpus = 1\naccel = "tcg"\n'
    '[input]\nbackend = "none"\n[[passthrough]]\naddress = "0a:00.0"\n'
    f'[host_display]\nhandover = true\nstop_units = ["{DM}"]\n'
)


@pytest.fixture
def single(tmp_path: Path) -> Iterator[tuple[DisplayHost, RecordedSystemd]]:
    display = single_gpu_host(tmp_path)
    systemd = RecordedSystemd(display)
    systemd.add_display_manager()
    yield display, systemd
    display.host.release_blocked()


def handover(
    display: DisplayHost, systemd: RecordedSystemd
) -> tuple[SessionPlan, DisplayHandover]:
    """The plan and its display resource as the session builds them, on the fake host."""
    profile = parse_profile(HANDOVER, SOURCE)
    plan = plan_session(profile, gather_host_facts(profile, display.paths, strict=False),
                        display.paths)
    (screen,) = [r for r in default_resources(plan, display.paths, report=lambda _: None)
                 if isinstance(r, DisplayHandover)]
    assert (screen.planned, screen.gpu) == (plan.display, plan.gpu)  # built from the plan
    screen.writer, screen.runner, screen.environ = display, systemd, {}
    screen.restorer = Restorer(display.paths, display, systemd, lambda _: None,
                               card_return(display.paths, display), node_wait=0.3)
    return plan, screen


def test_the_display_hand_over_takes_what_the_plan_prints(
    single: tuple[DisplayHost, RecordedSystemd],
) -> None:
    display, systemd = single
    plan, screen = handover(display, systemd)
    shown = [(c.kind, c.target) for c in plan.changes
             if c.kind in (ChangeKind.STOP_UNIT, ChangeKind.UNBIND_CONSOLE,
                           ChangeKind.UNBIND_FRAMEBUFFER, ChangeKind.DEVICE_TO_VFIO)]
    assert shown[:3] == [
        (ChangeKind.STOP_UNIT, DM),
        (ChangeKind.UNBIND_CONSOLE, "vtcon1 ((M) frame buffer device)"),
        (ChangeKind.UNBIND_FRAMEBUFFER, "simple-framebuffer.0"),
    ]  # before the card leaves its driver
    assert {kind for kind, _ in shown[3:]} == {ChangeKind.DEVICE_TO_VFIO}
    trio.run(screen.acquire)
    try:
        assert screen.takeover == plan.display
        assert display.writes == [("vtcon1/bind", "0"),
                                  ("simple-framebuffer/unbind", "simple-framebuffer.0")]
        assert ["systemctl", "stop", DM] in systemd.calls
    finally:
        trio.run(screen.release)
    assert display.vtconsole_bound("vtcon1")
    assert systemd.units[DM].active


def test_a_framebuffer_changed_after_the_plan_refuses_naming_it_and_changes_nothing(
    single: tuple[DisplayHost, RecordedSystemd],
) -> None:
    display, systemd = single
    _, screen = handover(display, systemd)
    display.write(display.paths.sys / "bus/platform/drivers/simple-framebuffer/unbind",
                  "simple-framebuffer.0")
    with pytest.raises(PreflightRefusedError) as refused:
        trio.run(screen.acquire)
    assert ("simple-framebuffer.0 was on simple-framebuffer when the session was planned, "
            "is on no driver now") in refused.value.message
    assert ["systemctl", "stop", DM] not in systemd.calls
    assert display.vtconsole_bound("vtcon1")
    assert list_display_journals(display.paths) == []


# --------------------------------------------------------------------------- input proxies


@pytest.mark.parametrize(("supervisor", "given"), [(0, 65534), (65534, None)])
def test_the_input_resource_gives_the_proxies_to_whom_the_plan_says(
    supervisor: int, given: int | None
) -> None:
    """vm.user's uid gets the proxies' nodes unless QEMU runs as the supervisor's user;
    the plan prints it (chown-node) and the resource is built with that very decision."""
    profile = parse_profile(
        '[vm]\nname = "p"\nmemory = "64M"\ncpus = 1\naccel = "tcg"\nuser = "nobody"\n'
        '[input]\nbackend = "virtio"\n', SOURCE,
    )
    paths = HostPaths(run=Path("/run/handoff"))
    facts = HostFacts(Accelerator.TCG, "test", supervisor,
                      qemu_owner=QemuOwner("nobody", 65534, 65534))
    plan = plan_session(profile, facts, paths)
    assert plan.proxies is not None
    assert plan.proxies.owner_uid == given
    assert plan.proxies.links == plan.paths.proxy_links
    chowns = [c for c in plan.changes if c.kind is ChangeKind.CHOWN_NODE]
    assert len(chowns) == (2 if given is not None else 0)
    (inputs,) = [r for r in default_resources(plan, paths) if isinstance(r, InputHandoff)]
    assert inputs.planned_proxies is plan.proxies


# --------------------------------------------------------------------------- the live group


def test_the_live_resource_moves_exactly_the_live_group_the_plan_prints(host: FakeHost) -> None:
    plan = planned(host, GPU_ONLY.replace('address = "01:00.0"\n',
                                          'address = "01:00.0"\nlive = true\n'))
    assert plan.gpu is None
    assert plan.live is not None
    moves = [c.target for c in plan.changes if c.kind is ChangeKind.DEVICE_TO_VFIO]
    assert moves == [str(d.address) for d in plan.live.detach_order]
    (live,) = [r for r in default_resources(plan, host.paths, report=lambda _: None)
               if isinstance(r, LiveGpu)]
    live.engine = Engine(host.paths, host)
    live._memlock_check = functools.partial(check_memlock, getrlimit=lambda _: (UNLIMITED,) * 2)
    trio.run(live.acquire)
    try:
        assert live.plan is plan.live
        assert moved_to_vfio(host) == moves
    finally:
        trio.run(live.release)
    assert group_1(host) == BEFORE


def test_a_group_that_gained_a_member_after_the_plan_refuses_naming_both(host: FakeHost) -> None:
    plan = planned(host)
    host.add_device("01:00.2", 0x1002, 0xAAC9, 0x040300, group=1, parent="00:01.0",
                    driver="snd_hda_intel")  # appeared beside the card after the plan
    gpu = gpu_resource(plan, host, [])
    with pytest.raises(PreflightRefusedError) as refused:
        trio.run(gpu.acquire)
    assert "IOMMU group 1 held 00:01.0, 01:00.0, 01:00.1, holds 00:01.0, 01:00.0, 01:00.1, " \
           "01:00.2 now" in refused.value.message
    assert jr.list_journals(host.paths) == []
