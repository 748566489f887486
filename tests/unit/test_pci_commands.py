"""`handoff groups`, `detach`, `attach`, `recover` against the fake host."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoff import journal as jr
from handoff.base.errors import PciError, PreflightRefusedError
from handoff.pci.address import PciAddress
from handoff.pci.commands import run_attach, run_detach, run_groups
from handoff.session.recovery import run_recover
from tests.unit.fakesysfs import FakeHost, lookalike_host, seed_machine

A = PciAddress.parse


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    fake = seed_machine(tmp_path)
    yield fake
    fake.release_blocked()


def test_groups_lists_every_group_with_its_devices_and_a_verdict(host: FakeHost) -> None:
    lines: list[str] = []
    assert run_groups(host.paths, host, as_json=False, out=lines.append) == 0
    text = "\n".join(lines)
    assert "IOMMU group 1: passable-with-co-members: passable together with 01:00.1" in text
    assert "  01:00.0    VGA compatible controller    [1002:67b0]  amdgpu" in text
    assert "IOMMU group 13: refused: every device in it is one the host needs" in text
    assert "IOMMU group 9: bridges-only" in text


def test_groups_json_is_for_scripts(host: FakeHost) -> None:
    lines: list[str] = []
    run_groups(host.paths, host, as_json=True, out=lines.append)
    data = json.loads("\n".join(lines))
    assert data["iommu"] is True
    by_group = {g["group"]: g for g in data["groups"]}
    assert by_group[1]["verdict"] == "passable-with-co-members"
    assert by_group[1]["co_members"] == ["0000:01:00.1"]
    gpu = by_group[1]["devices"][1]
    assert gpu == {
        "address": "0000:01:00.0",
        "class": "030000",
        "class_name": "VGA compatible controller",
        "vendor": "1002",
        "device": "67b0",
        "ids": "1002:67b0",
        "driver": "amdgpu",
        "driver_override": None,
        "boot_vga": False,
        "bridge": False,
        "header_type": 0x80,
    }
    assert by_group[13]["verdict"] == "refused"


def test_groups_without_an_iommu_says_how_to_turn_it_on(tmp_path: Path) -> None:
    bare = FakeHost(tmp_path)
    lines: list[str] = []
    assert run_groups(bare.paths, bare, as_json=False, out=lines.append) == 1
    assert "intel_iommu=on" in lines[0]


async def test_detach_then_attach_round_trips_the_lookalike_group(tmp_path: Path) -> None:
    host = lookalike_host(tmp_path)
    before = host.state()
    lines: list[str] = []
    assert await run_detach(host.paths, host, [A("00:06.0")], out=lines.append) == 0
    assert "bochs-drm -> vfio-pci" in lines[0]
    assert host.state()["00:06.0"] == ("vfio-pci", "vfio-pci")
    assert host.state()["00:06.1"] == ("vfio-pci", "vfio-pci")
    assert [p.name for p in jr.list_journals(host.paths)] == ["manual-5.json"]
    assert "handoff attach 00:06.1 00:06.0" in lines[-1]
    lines.clear()
    assert await run_attach(host.paths, host, [A("00:06.0")], out=lines.append) == 0
    assert lines == ["00:06.0 is back on bochs-drm", "00:06.1 is back on snd_hda_intel"]
    assert host.state() == before
    assert jr.list_journals(host.paths) == []


async def test_the_e1000e_round_trip_brings_eth0_back(tmp_path: Path) -> None:
    host = lookalike_host(tmp_path)
    nic = host.paths.sys / "bus/pci/devices/0000:00:02.0/net"
    assert [p.name for p in nic.iterdir()] == ["eth0"]
    await run_detach(host.paths, host, [A("00:02.0")], out=lambda _: None)
    assert not nic.exists()
    await run_attach(host.paths, host, [A("00:02.0")], out=lambda _: None)
    assert [p.name for p in nic.iterdir()] == ["eth0"]


async def test_the_ich9_group_is_refused(tmp_path: Path) -> None:
    host = lookalike_host(tmp_path)
    with pytest.raises(PreflightRefusedError, match="IOMMU group 6"):
        await run_detach(host.paths, host, [A("00:1f.3")], out=lambda _: None)


async def test_dry_run_prints_the_plan_and_changes_nothing(host: FakeHost) -> None:
    before = host.state()
    lines: list[str] = []
    await run_detach(host.paths, host, [A("01:00.0")], dry_run=True, out=lines.append)
    assert "IOMMU group 1" in lines[0]
    assert lines[-1] == "dry run: nothing changed"
    assert host.state() == before


async def test_attach_of_a_device_handoff_did_not_detach_is_refused(host: FakeHost) -> None:
    with pytest.raises(PciError) as caught:
        await run_attach(host.paths, host, [A("01:00.0")], out=lambda _: None)
    assert "not recorded" in caught.value.message
    assert caught.value.fix is not None
    assert "drivers_probe" in caught.value.fix


async def test_recover_with_nothing_to_do_says_so(host: FakeHost) -> None:
    lines: list[str] = []
    assert await run_recover(host.paths, host, out=lines.append) == 0
    assert lines == ["nothing to recover: no hand-off journal"]


async def test_recover_returns_a_manual_detach_too(host: FakeHost) -> None:
    await run_detach(host.paths, host, [A("01:00.0")], out=lambda _: None)
    lines: list[str] = []
    assert await run_recover(host.paths, host, out=lines.append) == 0
    assert lines == [
        "returned: 01:00.0 is back on amdgpu",
        "returned: 01:00.1 is back on snd_hda_intel",
    ]
