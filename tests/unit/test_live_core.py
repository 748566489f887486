"""Live GPU hand-off, the pure cores: windows, plug order, state machine, recovery choice."""

from __future__ import annotations

import itertools

import pytest

from handoff.live.recovery import LiveRecovery, decide
from handoff.live.sequence import add_arguments, del_ids, guest_slots, live_slots
from handoff.live.state import TRANSITIONS, LiveEvent, LiveState, LiveStep, transition
from handoff.live.windows import BarKind, PortWindows, parse_resource, size_windows
from handoff.pci.address import PciAddress
from handoff.profile import Passthrough
from handoff.qemu.cmdline import passthrough_args

# The testbed's GPU lookalike as its sysfs `resource` files list it (bochs-display:
# 16 MiB prefetchable 32-bit BAR0, 4 KiB MMIO BAR2; ich9-intel-hda: 16 KiB MMIO).
BOCHS_RESOURCE = (
    "0x00000000fd000000 0x00000000fdffffff 0x0000000000042208\n"
    "0x0000000000000000 0x0000000000000000 0x0000000000000000\n"
    "0x00000000fea10000 0x00000000fea10fff 0x0000000000040200\n"
    + "0x0000000000000000 0x0000000000000000 0x0000000000000000\n" * 10
)
HDA_RESOURCE = (
    "0x00000000fea14000 0x00000000fea17fff 0x0000000000040200\n"
    + "0x0000000000000000 0x0000000000000000 0x0000000000000000\n" * 12
)
# A discrete card: 256 MiB 64-bit prefetchable VRAM BAR, 2 MiB 64-bit prefetchable
# doorbell, 256 KiB MMIO, an I/O BAR and a 128 KiB ROM.
DGPU_RESOURCE = (
    "0x0000006000000000 0x000000600fffffff 0x000000000014220c\n"
    "0x0000000000000000 0x0000000000000000 0x0000000000000000\n"
    "0x0000006010000000 0x00000060101fffff 0x000000000014220c\n"
    "0x0000000000000000 0x0000000000000000 0x0000000000000000\n"
    "0x000000000000e000 0x000000000000e0ff 0x0000000000040101\n"
    "0x00000000fcd00000 0x00000000fcd3ffff 0x0000000000040200\n"
    "0x00000000fcd40000 0x00000000fcd5ffff 0x0000000000046200\n"
)


def test_bars_are_read_from_sysfs_resource_by_kind() -> None:
    bars = parse_resource(BOCHS_RESOURCE)
    assert [(b.index, b.size, b.kind) for b in bars] == [
        (0, 16 << 20, BarKind.PREF32), (2, 4096, BarKind.MEM)]
    kinds = [b.kind for b in parse_resource(DGPU_RESOURCE)]
    assert kinds == [BarKind.PREF64, BarKind.PREF64, BarKind.IO, BarKind.MEM, BarKind.MEM]


def test_the_lookalike_gets_the_measured_32m_prefetchable_window() -> None:
    windows = size_windows([parse_resource(BOCHS_RESOURCE), parse_resource(HDA_RESOURCE)])
    assert windows == PortWindows(pref32=32 << 20, mem=1 << 20)
    assert windows.qemu_options() == (("pref32-reserve", "32M"), ("mem-reserve", "1M"))


def test_a_64_bit_vram_bar_goes_to_pref64_with_room_and_a_power_of_two() -> None:
    windows = size_windows([parse_resource(DGPU_RESOURCE)])
    assert windows.pref64 == 1 << 30  # 2 x (256 + 2) MiB -> 1 GiB
    assert windows.io == 0x1000
    assert dict(windows.qemu_options())["pref64-reserve"] == "1G"
    assert "pref32-reserve" not in dict(windows.qemu_options())


def test_a_malformed_resource_line_is_refused() -> None:
    with pytest.raises(ValueError, match="resource line 0"):
        parse_resource("0x0 0x1\n")


GPU = Passthrough(PciAddress.parse("01:00.0"), live=True)
AUDIO = Passthrough(PciAddress.parse("01:00.1"), live=True)
NIC = Passthrough(PciAddress.parse("03:00.0"))


def test_plug_order_is_functions_1_up_then_0_with_multifunction() -> None:
    (slot,) = live_slots([NIC, AUDIO, GPU])
    args = add_arguments(slot)
    assert [(a["id"], a["addr"], a.get("multifunction")) for a in args] == [
        ("hostdev-0000-01-00-1", "00.1", None),
        ("hostdev-0000-01-00-0", "00.0", "on"),
    ]
    assert {a["bus"] for a in args} == {"rp1"}  # NIC's slot came first in the profile
    assert del_ids(slot) == ("hostdev-0000-01-00-0",)
    assert slot.ids == ("hostdev-0000-01-00-0", "hostdev-0000-01-00-1")


def test_a_plugged_slot_is_exactly_where_the_boot_argv_put_it() -> None:
    devices = [NIC, AUDIO, GPU, Passthrough(PciAddress.parse("05:00.3"), live=True)]
    boot = [v for f, v in itertools.pairwise(passthrough_args(devices)) if f == "-device"
            and v.startswith("vfio-pci")]
    plugged = []
    for slot in guest_slots(devices):
        for a in sorted(add_arguments(slot), key=lambda a: str(a["addr"])):
            plugged.append("vfio-pci," + ",".join(
                f"{k}={v}" for k, v in a.items() if k in ("host", "id", "bus", "addr",
                                                          "multifunction")))
    assert sorted(plugged) == sorted(boot)


def test_a_slot_without_live_entries_is_not_live() -> None:
    assert live_slots([NIC]) == ()


def test_the_state_table() -> None:
    rows = {(s, e): (t.to, t.step) for (s, e), t in TRANSITIONS.items()}
    assert rows == {
        (LiveState.IN_GUEST, LiveEvent.TO_HOST): (LiveState.TO_HOST_RELEASING,
                                                  LiveStep.RELEASING),
        (LiveState.TO_HOST_RELEASING, LiveEvent.RELEASED): (LiveState.ON_HOST,
                                                            LiveStep.ON_HOST),
        (LiveState.TO_HOST_RELEASING, LiveEvent.REFUSED): (LiveState.IN_GUEST,
                                                           LiveStep.IN_GUEST),
        (LiveState.ON_HOST, LiveEvent.TO_GUEST): (LiveState.TO_GUEST_ATTACHING,
                                                  LiveStep.ATTACHING),
        (LiveState.TO_GUEST_ATTACHING, LiveEvent.ATTACHED): (LiveState.IN_GUEST,
                                                             LiveStep.IN_GUEST),
        (LiveState.TO_GUEST_ATTACHING, LiveEvent.FAILED): (LiveState.ON_HOST,
                                                           LiveStep.ON_HOST),
    }


@pytest.mark.parametrize("state", list(LiveState))
@pytest.mark.parametrize("event", list(LiveEvent))
def test_every_other_pair_is_refused(state: LiveState, event: LiveEvent) -> None:
    if (state, event) not in TRANSITIONS:
        assert transition(state, event) is None
    else:
        assert transition(state, event) is TRANSITIONS[(state, event)]


def test_a_switch_under_way_takes_no_second_request() -> None:
    for busy in (LiveState.TO_HOST_RELEASING, LiveState.TO_GUEST_ATTACHING):
        assert transition(busy, LiveEvent.TO_HOST) is None
        assert transition(busy, LiveEvent.TO_GUEST) is None


@pytest.mark.parametrize(
    ("alive", "open_", "action"),
    [
        (True, True, LiveRecovery.LEAVE_IN_GUEST),
        (True, False, LiveRecovery.TO_HOST),
        (False, True, LiveRecovery.TO_HOST),
        (False, False, LiveRecovery.TO_HOST),
    ],
)
def test_recovery_keeps_only_what_a_live_qemu_holds(
    alive: bool, open_: bool, action: LiveRecovery
) -> None:
    assert decide(qemu_alive=alive, group_open=open_) is action
