"""The one session plan with a live group: windows from the real BARs, the hotplug pinned."""

from __future__ import annotations

from pathlib import Path

from handoff.base.host import HostPaths
from handoff.live.windows import parse_resource
from handoff.pci.address import PciAddress
from handoff.profile import Accelerator, parse_profile
from handoff.session.host_facts import gather_host_facts
from handoff.session.plan import LIVE_HOTPLUG_GLOBAL, HostFacts, SessionPlan, plan_session
from tests.unit.fakesysfs import lookalike_host
from tests.unit.test_live_core import BOCHS_RESOURCE, HDA_RESOURCE

GPU = PciAddress.parse("00:06.0")
AUDIO = PciAddress.parse("00:06.1")
PROFILE = (
    '[vm]\nname = "p"\nmemory = "64M"\ncpus = 1\naccel = "tcg"\n'
    '[[passthrough]]\naddress = "00:02.0"\n'
    '[[passthrough]]\naddress = "00:06.0"\nlive = {live}\n'
    '[[passthrough]]\naddress = "00:06.1"\nlive = {live}\n'
)
FACTS = HostFacts(
    accel=Accelerator.TCG, accel_reason="test", supervisor_uid=0,
    live_bars=((GPU, parse_resource(BOCHS_RESOURCE)), (AUDIO, parse_resource(HDA_RESOURCE))),
)


def plan(live: bool, facts: HostFacts = FACTS) -> SessionPlan:
    profile = parse_profile(PROFILE.format(live=str(live).lower()), Path("/vms/p.toml"))
    return plan_session(profile, facts, HostPaths(run=Path("/run/handoff")))


def devices(argv: tuple[str, ...]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-device"]


def test_a_live_slot_gets_windows_from_its_bars_and_the_others_none() -> None:
    argv = plan(live=True).argv
    ports = [d for d in devices(argv) if d.startswith("pcie-root-port")]
    assert ports == [
        "pcie-root-port,id=rp0,chassis=1,slot=1",
        "pcie-root-port,id=rp1,chassis=2,slot=2,pref32-reserve=32M,mem-reserve=1M",
    ]


def test_acpi_hotplug_is_pinned_before_the_ports_so_extra_args_can_override_it() -> None:
    argv = plan(live=True).argv
    at = argv.index(LIVE_HOTPLUG_GLOBAL)
    assert argv[at - 1] == "-global"
    assert argv[at + 2].startswith("pcie-root-port")


def test_the_run_argv_is_the_printed_one() -> None:
    p = plan(live=True)
    run = p.argv_with_monitor_fd(7)
    assert LIVE_HOTPLUG_GLOBAL in run
    assert [d for d in devices(run) if "reserve" in d] == [
        d for d in devices(p.argv) if "reserve" in d]


def test_without_a_live_group_the_argv_is_as_before() -> None:
    argv = plan(live=False).argv
    assert LIVE_HOTPLUG_GLOBAL not in argv
    assert not [d for d in devices(argv) if "reserve" in d]


def test_host_facts_read_the_live_functions_bars_from_sysfs(tmp_path: Path) -> None:
    host = lookalike_host(tmp_path)
    for address, text in ((GPU, BOCHS_RESOURCE), (AUDIO, HDA_RESOURCE)):
        (host.device_dir(address) / "resource").write_text(text)
    profile = parse_profile(PROFILE.format(live="true"), Path("/vms/p.toml"))
    facts = gather_host_facts(profile, host.paths, strict=False)
    assert dict(facts.live_bars) == dict(FACTS.live_bars)
    assert "pref32-reserve=32M" in " ".join(plan(live=True, facts=facts).argv)
