"""Single-GPU hand-over, the pure cores: consoles by name, the firmware framebuffer on the
card, the steps and their undo order, the failure report, where a supervisor may run."""

from __future__ import annotations

from pathlib import Path

import pytest

from handoff.base.errors import PreflightRefusedError
from handoff.display.model import (
    RETURN_FIX,
    DisplayStep,
    FirmwareFb,
    MemoryRange,
    ReturnFailure,
    Takeover,
    VtConsole,
    console_fallback,
    consoles_to_rebind,
    consoles_to_unbind,
    firmware_fb_on_card,
    plan_return,
)
from handoff.display.where import WhereFacts, where_refusal
from handoff.pci.plan import plan_handoff
from handoff.pci.snapshot import take_snapshot
from tests.unit.fakesysfs import FakeHost, boot_gpu_only_host

FBCON = "(M) frame buffer device"
BARS = (MemoryRange(0xE0000000, 0xEFFFFFFF), MemoryRange(0xFCD00000, 0xFCD3FFFF))


def test_framebuffer_consoles_are_found_by_name_at_any_index() -> None:
    testbed = (VtConsole("vtcon0", FBCON, True),)
    desktop = (
        VtConsole("vtcon0", "(S) dummy device", False),
        VtConsole("vtcon1", FBCON, True),
        VtConsole("vtcon2", "(S) VGA+", True),
    )
    assert [c.node for c in consoles_to_unbind(testbed)] == ["vtcon0"]
    assert [c.node for c in consoles_to_unbind(desktop)] == ["vtcon1"]
    assert consoles_to_unbind((VtConsole("vtcon1", FBCON, False),)) == ()


def test_consoles_are_bound_again_by_the_recorded_name_not_the_index() -> None:
    after = (VtConsole("vtcon0", "(S) dummy device", False), VtConsole("vtcon3", FBCON, False))
    assert [c.node for c in consoles_to_rebind(after, [FBCON])] == ["vtcon3"]
    assert consoles_to_rebind((VtConsole("vtcon1", FBCON, True),), [FBCON]) == ()


def test_the_firmware_framebuffer_on_the_card_is_the_one_inside_its_bars() -> None:
    on_card = FirmwareFb("efi-framebuffer.0", "efi-framebuffer",
                         MemoryRange(0xE0000000, 0xE07FFFFF))
    elsewhere = FirmwareFb("simple-framebuffer.0", "simple-framebuffer",
                           MemoryRange(0xC0000000, 0xC07FFFFF))
    assert firmware_fb_on_card([elsewhere, on_card], "0000:0a:00.0", BARS) == on_card
    assert firmware_fb_on_card([elsewhere], "0000:0a:00.0", BARS) is None
    unbound = FirmwareFb("efi-framebuffer.0", None, MemoryRange(0xE0000000, 0xE07FFFFF))
    assert firmware_fb_on_card([unbound], "0000:0a:00.0", BARS) is None
    parented = FirmwareFb("simple-framebuffer.0", "simple-framebuffer", None, "0000:0a:00.0")
    assert firmware_fb_on_card([parented], "0000:0a:00.0", ()) == parented


def test_steps_before_in_order_and_their_undo_in_reverse_card_first() -> None:
    fb = FirmwareFb("efi-framebuffer.0", "efi-framebuffer", None, "0000:0a:00.0")
    takeover = Takeover("0000:0a:00.0", ("display-manager.service",),
                        (VtConsole("vtcon1", FBCON, True),), fb)
    assert takeover.steps() == (
        DisplayStep.STOP_UNITS, DisplayStep.UNBIND_CONSOLES, DisplayStep.UNBIND_FRAMEBUFFER,
    )
    assert plan_return(takeover.steps()) == (
        DisplayStep.CARD_BACK, DisplayStep.REBIND_FRAMEBUFFER, DisplayStep.REBIND_CONSOLES,
        DisplayStep.START_UNITS,
    )
    # A supervisor killed after stopping the units: only they are undone, after the card.
    assert plan_return([DisplayStep.STOP_UNITS]) == (DisplayStep.CARD_BACK, DisplayStep.START_UNITS)
    assert Takeover("0000:0a:00.0", (), (), None).steps() == ()


def test_the_failure_report_names_the_device_what_failed_and_the_fix() -> None:
    failure = ReturnFailure("0000:0a:00.0", "amdgpu", "it is on no driver",
                            "its reset (bus) was done, the card still did not come back")
    text = failure.text()
    assert "0000:0a:00.0 did not come back on amdgpu: it is on no driver" in text
    assert "units stay stopped" in text
    assert failure.fix == RETURN_FIX
    assert "vendor-reset" in RETURN_FIX
    assert "reboot" in RETURN_FIX


def test_a_supervisor_inside_a_stopped_unit_or_a_graphical_session_is_refused() -> None:
    units = {"display-manager.service": "/system.slice/display-manager.service"}
    inside = WhereFacts("/system.slice/display-manager.service/session", units)
    refused = where_refusal(inside, "win10")
    assert refused is not None
    assert "display-manager.service's cgroup" in refused[0]
    assert "systemctl start handoff@win10" in refused[1]
    assert "SSH" in refused[1]
    session = WhereFacts("/user.slice/user-1000.slice/session-2.scope", units,
                         graphical_cgroups=("/user.slice/user-1000.slice/session-2.scope",))
    assert where_refusal(session, "win10") is not None
    terminal = WhereFacts("/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope",
                          units, display_env="wayland-0")
    assert where_refusal(terminal, "win10") is not None


def test_a_supervisor_outside_may_run() -> None:
    units = {"display-manager.service": "/system.slice/display-manager.service",
             "stopped.service": None}
    service = WhereFacts("/system.slice/system-handoff.slice/handoff@win10.service", units,
                         graphical_cgroups=("/user.slice/user-1000.slice/session-2.scope",))
    assert where_refusal(service, "win10") is None
    # A sibling whose name starts the same is not inside.
    sibling = WhereFacts("/system.slice/display-manager.service-helper", units)
    assert where_refusal(sibling, "win10") is None


def test_only_handover_lifts_the_boot_gpu_refusal(tmp_path: Path) -> None:
    host: FakeHost = boot_gpu_only_host(tmp_path)
    host.add_vtconsole(bound=True)
    card = next(a for a in host.devices if a.short == "0a:00.0")
    snapshot = take_snapshot(host.paths, host.module_loadable)
    with pytest.raises(PreflightRefusedError) as refused:
        plan_handoff([card], snapshot)
    assert "boot GPU" in refused.value.message
    assert "[host_display] handover = true" in (refused.value.fix or "")
    plan = plan_handoff([card], snapshot, handover=True)
    assert [d.address.short for d in plan.detach_order] == ["0a:00.1", "0a:00.0"]


def test_fbcon_without_another_console_driver_cannot_be_unbound() -> None:
    # Measured in the testbed: fbcon alone in /sys/class/vtconsole ignores "echo 0 > bind".
    alone = (VtConsole("vtcon1", FBCON, True),)
    assert not console_fallback(alone)
    assert console_fallback((VtConsole("vtcon0", FBCON, True),
                             VtConsole("vtcon1", "(M) dummy device", False)))
