"""Resets: the pure rules (methods, warnings, a pinned reset, the ladder) and the ladder
and pin run by the engine on the fake sysfs tree, including a SIGKILL at every write."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoff import journal as jr
from handoff.base.errors import BindError, PreflightRefusedError
from handoff.pci import vendor_reset
from handoff.pci.address import PciAddress
from handoff.pci.engine import Engine
from handoff.pci.plan import plan_handoff
from handoff.pci.recovery import recover
from handoff.pci.reset import (
    Health,
    ModuleState,
    ResetChoice,
    ResetFacts,
    Rung,
    describe,
    give_up_fix,
    next_rung,
    pcie_flr,
    pin_value,
    warnings,
)
from handoff.pci.resource import GpuHandoff
from handoff.pci.revive import ladder_failures
from handoff.pci.snapshot import take_snapshot
from handoff.profile import Passthrough, Profile, Vm
from handoff.session.memlock import UNLIMITED, check_memlock
from tests.crash import SimulatedCrash, crash_after
from tests.unit.fakesysfs import FakeHost, session_journal, standard_drivers

A = PciAddress.parse
CARD = {"0a:00.0": ("amdgpu", "(null)"), "0a:00.1": ("snd_hda_intel", "(null)")}
ON_VFIO = {"0a:00.0": ("vfio-pci", "vfio-pci"), "0a:00.1": ("vfio-pci", "vfio-pci")}


def facts(**changes: object) -> ResetFacts:
    base = ResetFacts(A("01:00.0"), 0x10DE, 0x2206, (6, 1), ("flr", "bus"), True, True)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- vendor-reset's list


def test_vendor_resets_list_is_kept_with_its_source_and_version() -> None:
    assert "gnif/vendor-reset" in vendor_reset.SOURCE
    assert "device-db.h" in vendor_reset.SOURCE
    assert len(vendor_reset.VERSION) == 40
    assert vendor_reset.family_of(0x1002, 0x67DF) is vendor_reset.Family.POLARIS10  # RX 580
    assert vendor_reset.family_of(0x1002, 0x699F) is vendor_reset.Family.POLARIS12
    assert vendor_reset.family_of(0x1002, 0x687F) is vendor_reset.Family.VEGA10  # Vega 64
    assert vendor_reset.family_of(0x1002, 0x66AF) is vendor_reset.Family.VEGA20  # Radeon VII
    assert vendor_reset.family_of(0x1002, 0x731F) is vendor_reset.Family.NAVI10  # RX 5700
    assert vendor_reset.family_of(0x1002, 0x7340) is vendor_reset.Family.NAVI14
    assert vendor_reset.family_of(0x1002, 0x7362) is vendor_reset.Family.NAVI12
    # Not on the list: Navi 21 (resets itself), the HDMI audio, another vendor's 67df.
    assert vendor_reset.family_of(0x1002, 0x73BF) is None
    assert vendor_reset.family_of(0x1002, 0xAAF0) is None
    assert vendor_reset.family_of(0x10DE, 0x67DF) is None


# --------------------------------------------------------------------------- before the first start


def test_the_methods_are_the_kernels_list_or_what_an_older_kernel_shows() -> None:
    assert describe(facts()) == "flr bus"
    assert describe(facts(methods=())) == "none (reset_method is empty)"
    assert describe(facts(methods=None, reset_file=False)) == "none"  # 5.15+: no method at all
    old = facts(kernel=(5, 10), methods=None)
    assert describe(old).startswith("flr, a kernel reset")
    assert describe(dataclasses.replace(old, flr=False, reset_file=False)) == "none"


def test_a_card_that_resets_gets_no_warning() -> None:
    assert warnings(facts()) == ()


def test_a_polaris_card_without_vendor_reset_warns_to_install_and_load_it_early() -> None:
    (found,) = warnings(facts(vendor=0x1002, device=0x67DF))
    assert "AMD Polaris 10 card" in found.text
    assert "vendor-reset is not installed" in found.text
    assert "install vendor-reset" in found.fix
    assert "/etc/modules-load.d/vendor-reset.conf" in found.fix


def test_vendor_reset_installed_but_not_loaded_says_to_load_it_at_boot() -> None:
    (found,) = warnings(facts(vendor=0x1002, device=0x731F, vendor_reset=ModuleState.INSTALLED))
    assert "installed but not loaded" in found.text
    assert not found.fix.startswith("install")
    assert "modules-load.d" in found.fix


def test_vendor_reset_loaded_but_not_first_in_reset_method_gives_the_exact_write() -> None:
    card = facts(vendor=0x1002, device=0x687F, vendor_reset=ModuleState.LOADED,
                 methods=("flr", "bus", "device_specific"))  # fmt: skip
    (found,) = warnings(card)
    assert "not vendor-reset's device_specific" in found.text
    assert found.fix.startswith(
        "echo device_specific > /sys/bus/pci/devices/0000:01:00.0/reset_method"
    )
    assert warnings(dataclasses.replace(card, methods=("device_specific", "bus"))) == ()


def test_no_reset_method_at_all_says_the_second_start_needs_a_reboot_or_a_bus_reset() -> None:
    for card in (facts(methods=None, reset_file=False), facts(methods=()),
                 facts(kernel=(5, 4), methods=None, reset_file=False, flr=False)):  # fmt: skip
        (found,) = warnings(card)
        assert "the VM's second start needs a reboot or a bus reset" in found.text


def test_flr_is_read_from_the_pcie_capability() -> None:
    config = bytearray(256)
    config[0x06] = 0x10  # capability list
    config[0x34] = 0x40
    config[0x40:0x42] = bytes([0x01, 0x60])  # PM, next at 0x60
    config[0x60:0x62] = bytes([0x10, 0x00])  # PCI Express, last
    config[0x64:0x68] = (1 << 28).to_bytes(4, "little")
    assert pcie_flr(bytes(config))
    config[0x64:0x68] = bytes(4)
    assert not pcie_flr(bytes(config))
    assert not pcie_flr(b"\xff" * 256)  # a dead function advertises nothing usable
    assert not pcie_flr(b"")


# --------------------------------------------------------------------------- a pinned reset


def test_a_pinned_reset_writes_an_offered_method_and_auto_writes_nothing() -> None:
    assert pin_value(ResetChoice.AUTO, facts(), "p.toml") is None
    assert pin_value(ResetChoice.BUS, facts(), "p.toml") == "bus"
    assert pin_value(ResetChoice.NONE, facts(), "p.toml") == ""
    assert pin_value(ResetChoice.NONE, facts(methods=None, reset_file=False), "p.toml") is None


def test_a_method_the_kernel_does_not_offer_is_refused_listing_the_offered_ones() -> None:
    with pytest.raises(PreflightRefusedError) as refused:
        pin_value(ResetChoice.DEVICE_SPECIFIC, facts(), "g.toml: passthrough[0].reset")
    assert refused.value.message == (
        'g.toml: passthrough[0].reset = "device_specific": the kernel offers 01:00.0 only these '
        "reset methods: flr bus (/sys/bus/pci/devices/0000:01:00.0/reset_method)"
    )
    assert refused.value.fix == 'set reset to one of "auto", "none", "flr", "bus"'


def test_a_pinned_reset_on_a_kernel_without_reset_method_is_one_line_with_the_fix() -> None:
    with pytest.raises(PreflightRefusedError) as refused:
        pin_value(ResetChoice.FLR, facts(kernel=(5, 10), methods=None), "g.toml: p[0].reset")
    assert "\n" not in refused.value.message
    assert "needs the kernel's reset_method (Linux 5.15 or later)" in refused.value.message
    assert "the running kernel is 5.10" in refused.value.message
    assert refused.value.fix is not None
    assert "5.15" in refused.value.fix


# --------------------------------------------------------------------------- the ladder (pure)

ALIVE, DEAD, GONE = Health.ALIVE, Health.DEAD, Health.GONE


@pytest.mark.parametrize(
    ("healths", "can_reset", "reset_tried", "rescan_done", "rung"),
    [
        ((ALIVE, ALIVE), True, False, False, Rung.RETURN),
        ((DEAD, ALIVE), True, False, False, Rung.RESET),
        ((DEAD, ALIVE), False, False, False, Rung.RESCAN),  # no reset method: straight on
        ((DEAD, DEAD), True, True, False, Rung.RESCAN),  # the reset was tried (journaled)
        ((GONE, ALIVE), False, False, False, Rung.RESCAN),
        ((DEAD, ALIVE), True, True, True, Rung.GIVE_UP),
        ((ALIVE, ALIVE), False, True, True, Rung.RETURN),
    ],
)
def test_the_ladder_resets_once_then_rescans_once_then_gives_up(
    healths: tuple[Health, ...], can_reset: bool, reset_tried: bool, rescan_done: bool,
    rung: Rung,
) -> None:
    assert next_rung(healths, can_reset=can_reset, reset_tried=reset_tried,
                     rescan_done=rescan_done) is rung  # fmt: skip


def test_the_fix_when_nothing_worked_names_a_reboot_and_vendor_reset_for_its_cards() -> None:
    polaris = give_up_fix(0x1002, 0x67DF, A("0a:00.0"))
    assert "reboot the host to bring 0a:00.0 back" in polaris
    assert "vendor-reset" in polaris
    assert polaris.endswith("then `handoff recover`")
    assert "vendor-reset" not in give_up_fix(0x10DE, 0x2206, A("0a:00.0"))


# --------------------------------------------------------------------------- on the fake tree


def polaris_host(root: Path, *, methods: tuple[str, ...] | None = ("flr", "bus"),
                 revives: bool = False) -> FakeHost:  # fmt: skip
    """An RX 580 (Polaris 10) and its HDMI audio on a root port, one group; Linux 6.1."""
    host = FakeHost(root)
    standard_drivers(host, vfio_loaded=True)
    host.add_driver("amdgpu-polaris", "amdgpu_polaris", ids={(0x1002, 0x67DF)}, kind="drm")
    host.add_driver("snd_hda_x", "snd_hda_x", ids={(0x1002, 0xAAF0)}, kind="sound")
    host.add_device("00:00.0", 0x1022, 0x1480, 0x060000, group=0)
    host.add_device("00:03.1", 0x1022, 0x1483, 0x060400, group=7, header=0x01,
                    driver="pcieport")
    gpu = host.add_device("0a:00.0", 0x1002, 0x67DF, 0x030000, group=7, parent="00:03.1",
                          driver="amdgpu-polaris", header=0x80, reset_methods=methods)
    gpu.reset_revives = revives
    host.add_device("0a:00.1", 0x1002, 0xAAF0, 0x040300, group=7, parent="00:03.1",
                    driver="snd_hda_x", header=0x80, reset_methods=methods)
    (host.paths.proc / "sys/kernel/osrelease").write_text("6.1.0-27-amd64\n")
    return host


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    fake = polaris_host(tmp_path)
    yield fake
    fake.release_blocked()


def card(host: FakeHost) -> dict[str, tuple[str | None, str | None]]:
    state = host.state()
    drivers = {"amdgpu-polaris": "amdgpu", "snd_hda_x": "snd_hda_intel"}
    return {a: (drivers.get(state[a][0] or "", state[a][0]), state[a][1]) for a in CARD}


class SysLog:
    def __init__(self) -> None:
        self.entries: list[tuple[str, bool]] = []

    def __call__(self, text: str, error: bool) -> None:
        self.entries.append((text, error))


def engine(host: FakeHost, syslog: SysLog | None = None) -> Engine:
    return Engine(host.paths, host, syslog=syslog or SysLog())


async def detached(host: FakeHost, pins: dict[PciAddress, str] | None = None) -> jr.Journal:
    journal = session_journal(host, "gaming")
    plan = plan_handoff([A("0a:00.0")], take_snapshot(host.paths, host.module_loadable))
    await engine(host).detach(plan, journal, reset_pins=pins)
    assert card(host) == ON_VFIO
    return journal


async def test_a_live_card_returns_without_a_ladder_step(host: FakeHost) -> None:
    journal = await detached(host)
    syslog = SysLog()
    notes = await engine(host, syslog).give_back(journal)
    assert card(host) == CARD
    assert syslog.entries == []
    assert not any("reset" in n or "rescan" in n for n in notes)


async def test_a_dead_function_is_reset_once_journaled_first_and_then_returned(
    tmp_path: Path,
) -> None:
    host = polaris_host(tmp_path, revives=True)
    journal = await detached(host)
    host.kill("0a:00.0")
    steps: list[str] = []
    real_write = host.write

    def write(path: Path, value: str) -> None:
        if path.name == "reset":
            record = jr.Journal.load(journal.path).record("0000:0a:00.0")
            steps.append(f"reset written with the journal at {record.step}")
        real_write(path, value)

    host.write = write  # type: ignore[method-assign]
    syslog = SysLog()
    notes = await engine(host, syslog).give_back(journal)
    assert steps == ["reset written with the journal at resetting"]
    assert host.devices[A("0a:00.0")].resets == 1
    assert card(host) == CARD
    assert "after the VM 0a:00.0 reads ffff (dead): bringing the card back" in notes
    assert "0a:00.0: the kernel's reset done" in notes
    assert [e for e, error in syslog.entries if error] == []
    assert len(syslog.entries) == 3  # dead, reset, back: each in the system journal
    assert not journal.path.exists()


async def test_a_reset_that_does_not_help_is_followed_by_remove_and_rescan(
    host: FakeHost,
) -> None:
    # The person's own driver_override on the audio function comes back too.
    host.write(host.paths.sys / "bus/pci/devices/0000:0a:00.1/driver_override", "snd_hda_x")
    journal = await detached(host)
    host.kill("0a:00.0")
    host.kill("0a:00.1")
    notes = await engine(host).give_back(journal)
    assert host.devices[A("0a:00.0")].resets == 0  # a new device after the rescan
    assert card(host) == {"0a:00.0": ("amdgpu", "(null)"), "0a:00.1": ("snd_hda_intel",
                                                                       "snd_hda_x")}
    assert "0a:00.0, 0a:00.1: removing the card's functions and rescanning the PCI bus" in notes
    assert "0a:00.0, 0a:00.1: the card answers again (config space reads its ids)" in notes
    removes = [w for w, _ in host.writes if w.endswith("/remove")]
    assert [r.rsplit("/", 2)[-2] for r in removes] == ["0000:0a:00.1", "0000:0a:00.0"]
    assert ("sys/bus/pci/rescan", "1") in host.writes
    assert not journal.path.exists()


async def test_a_card_that_stays_dead_keeps_its_record_with_the_outcome_and_the_fix(
    host: FakeHost,
) -> None:
    journal = await detached(host)
    host.kill("0a:00.0")
    host.stays_dead.add(A("0a:00.0"))
    syslog = SysLog()
    with pytest.raises(BindError) as failed:
        await engine(host, syslog).give_back(journal)
    assert "0a:00.0 is still dead (config space reads ffff) after the kernel's reset and a " \
        "remove + rescan" in failed.value.message
    assert "reboot the host to bring 0a:00.0 back" in failed.value.message  # its own fix
    assert "vendor-reset" in failed.value.message
    (left,) = jr.Journal.load(journal.path).devices
    assert left.address == "0000:0a:00.0"
    assert left.outcome is not None
    assert card(host)["0a:00.1"] == ("snd_hda_intel", "(null)")  # the audio went home
    assert [text for text, error in syslog.entries if error] == [left.outcome]
    (status,) = ladder_failures(host.paths)
    assert status.startswith("gaming: 0a:00.0 is still dead")
    assert "fix: reboot the host" in status


@pytest.mark.parametrize("writes", range(1, 6))
async def test_recover_finishes_a_ladder_killed_after_any_journal_write(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch, writes: int
) -> None:
    # Journal writes of the return: resetting (each function), rescanning (the card), then
    # one per function back.
    journal = await detached(host)
    host.kill("0a:00.0")
    host.kill("0a:00.1")
    crash_after(monkeypatch, jr.Journal, "save", writes)
    with pytest.raises(SimulatedCrash):
        await engine(host).give_back(journal)
    monkeypatch.undo()
    report = await recover(engine(host))
    assert report.ok, report.lines()
    assert card(host) == CARD
    assert jr.list_journals(host.paths) == []


@pytest.mark.parametrize("writes", range(1, 6))
async def test_recover_finishes_a_ladder_killed_between_any_two_sysfs_writes(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch, writes: int
) -> None:
    # The ladder's writes: reset 0a:00.0 and 0a:00.1, remove 0a:00.1, 0a:00.0, rescan.
    journal = await detached(host)
    host.kill("0a:00.0")
    host.kill("0a:00.1")
    crash_after(monkeypatch, FakeHost, "write", writes)
    with pytest.raises(SimulatedCrash):
        await engine(host).give_back(journal)
    monkeypatch.undo()
    ladder = {jr.DeviceStep.RESETTING, jr.DeviceStep.RESCANNING}
    assert ladder & {d.step for d in jr.Journal.load(journal.path).devices}
    report = await recover(engine(host))
    assert report.ok, report.lines()
    assert card(host) == CARD
    assert jr.list_journals(host.paths) == []


# --------------------------------------------------------------------------- a pinned reset


def reset_method(host: FakeHost, address: str) -> str:
    return (host.paths.sys / "bus/pci/devices" / str(A(address)) / "reset_method").read_text()


async def test_a_pinned_reset_is_journaled_written_and_restored(host: FakeHost) -> None:
    journal = await detached(host, {A("0a:00.0"): "bus"})
    assert reset_method(host, "0a:00.0") == "bus\n"
    assert jr.Journal.load(journal.path).record("0000:0a:00.0").reset_method == "flr bus"
    assert reset_method(host, "0a:00.1") == "flr bus\n"  # not pinned, not touched
    await engine(host).give_back(journal)
    assert reset_method(host, "0a:00.0") == "flr bus\n"
    assert card(host) == CARD


@pytest.mark.parametrize("writes", range(1, 8))  # 7: the pin, then 3 per function
async def test_recover_restores_a_pinned_reset_after_a_crash_at_any_sysfs_write(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch, writes: int
) -> None:
    crash_after(monkeypatch, FakeHost, "write", writes)
    with pytest.raises(SimulatedCrash):
        await detached(host, {A("0a:00.0"): ""})
    monkeypatch.undo()
    report = await recover(engine(host))
    assert report.ok, report.lines()
    assert reset_method(host, "0a:00.0") == "flr bus\n"
    assert card(host) == CARD


def session(host: FakeHost, reset: ResetChoice) -> GpuHandoff:
    profile = Profile(
        vm=Vm(name="gaming", memory_mib=4096), source=Path("gaming.toml"),
        passthrough=(Passthrough(address=A("0a:00.0"), reset=reset),),
    )  # fmt: skip
    return GpuHandoff(
        profile, host.paths, writer=host, report=lambda _: None,
        memlock_check=functools.partial(check_memlock, getrlimit=lambda _: (UNLIMITED, UNLIMITED)),
    )  # fmt: skip


async def test_a_session_refuses_an_unoffered_reset_before_any_change(host: FakeHost) -> None:
    with pytest.raises(PreflightRefusedError) as refused:
        await session(host, ResetChoice.DEVICE_SPECIFIC).acquire()
    assert refused.value.message.startswith('gaming.toml: passthrough[0].reset = "device_specific"')
    assert "flr bus" in refused.value.message
    assert host.writes == []
    assert card(host) == CARD


async def test_a_session_refuses_a_reset_on_a_kernel_without_reset_method(
    tmp_path: Path,
) -> None:
    host = polaris_host(tmp_path, methods=None)
    (host.paths.proc / "sys/kernel/osrelease").write_text("5.10.0-30-amd64\n")
    with pytest.raises(PreflightRefusedError) as refused:
        await session(host, ResetChoice.FLR).acquire()
    assert "the running kernel is 5.10" in refused.value.message
    assert host.writes == []


async def test_a_session_warns_before_the_first_start_and_pins_for_its_life(
    host: FakeHost,
) -> None:
    lines: list[str] = []
    gpu = session(host, ResetChoice.BUS)
    gpu.report = lines.append
    await gpu.acquire()
    assert reset_method(host, "0a:00.0") == "bus\n"
    warned = [line for line in lines if line.startswith("warning:")]
    assert len(warned) == 1
    assert "AMD Polaris 10 card" in warned[0]
    await gpu.release()
    assert reset_method(host, "0a:00.0") == "flr bus\n"
    assert card(host) == CARD
