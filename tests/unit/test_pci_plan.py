"""The plan: requested addresses grow to whole IOMMU groups; every refusal says why and how."""

from pathlib import Path

import pytest

from handoff.base.errors import PreflightRefusedError
from handoff.pci.address import PciAddress
from handoff.pci.plan import HostSnapshot, Passability, group_verdicts, plan_handoff
from handoff.pci.snapshot import take_snapshot
from tests.unit.fakesysfs import FakeHost, nvidia_gpu, seed_machine

A = PciAddress.parse


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return seed_machine(tmp_path)


def snap(host: FakeHost) -> HostSnapshot:
    return take_snapshot(host.paths, host.module_loadable)


def test_the_gpu_grows_to_its_group_and_the_bridge_stays(host: FakeHost) -> None:
    plan = plan_handoff([A("01:00.0")], snap(host))
    (group,) = plan.groups
    assert group.group == 1
    assert [d.address.short for d in group.moved] == ["01:00.0", "01:00.1"]
    assert [d.address.short for d in group.staying] == ["00:01.0"]
    assert [d.address.short for d in group.co_members] == ["01:00.1"]


def test_non_vga_functions_detach_first(host: FakeHost) -> None:
    # The engine returns in the reverse order, VGA first: test_pci_bind's write sequence.
    plan = plan_handoff([A("01:00.0"), A("01:00.1")], snap(host))
    assert [d.address.short for d in plan.detach_order] == ["01:00.1", "01:00.0"]


def test_the_printed_plan_names_every_member_and_what_happens_to_it(host: FakeHost) -> None:
    text = plan_handoff([A("01:00.0")], snap(host)).render()
    assert "IOMMU group 1" in text
    assert "00:01.0 PCI bridge [8086:0c01] (pcieport): stays with the host" in text
    assert "01:00.1 Audio device [1002:aac8] (snd_hda_intel): snd_hda_intel -> vfio-pci" in text
    assert "co-member" in text
    assert "amdgpu -> vfio-pci (step 2)" in text


def test_the_seed_group_13_is_refused_naming_its_members_and_the_fix(host: FakeHost) -> None:
    with pytest.raises(PreflightRefusedError) as caught:
        plan_handoff([A("00:1f.3")], snap(host))
    message = caught.value.message
    assert "IOMMU group 13" in message
    assert "00:1f.0 ISA bridge [8086:8c44] (lpc_ich)" in message
    assert "00:1f.2 SATA controller" in message
    assert "storage controller" in message
    assert caught.value.fix is not None
    assert "allow_in_group" in caught.value.fix


def test_allow_in_group_accepts_co_members_the_person_named(host: FakeHost) -> None:
    plan = plan_handoff(
        [A("00:1f.3")], snap(host), allow_in_group=[A("00:1f.0"), A("00:1f.2")]
    )
    assert [d.address.short for d in plan.detach_order] == ["00:1f.0", "00:1f.2", "00:1f.3"]


def test_a_nic_requested_on_purpose_is_passable(host: FakeHost) -> None:
    plan = plan_handoff([A("03:00.0")], snap(host))
    assert [d.address.short for d in plan.detach_order] == ["03:00.0"]


def test_group_verdicts_describe_the_seed_machine(host: FakeHost) -> None:
    verdicts = {v.group: v for v in group_verdicts(snap(host))}
    assert verdicts[1].verdict is Passability.PASSABLE_WITH_CO_MEMBERS
    assert verdicts[1].co_members == (A("01:00.1"),)
    # The HD 4600 is the boot GPU: its group is the host's display, console or not.
    assert verdicts[2].verdict is Passability.REFUSED
    assert "boot GPU" in verdicts[2].reason
    assert verdicts[7].verdict is Passability.PASSABLE
    assert verdicts[9].verdict is Passability.BRIDGES_ONLY
    assert verdicts[13].verdict is Passability.REFUSED
    assert "ISA/LPC bridge" in verdicts[13].reason
    assert verdicts[0].verdict is Passability.REFUSED


def test_a_gpu_sharing_its_group_with_a_nic_is_refused(tmp_path: Path) -> None:
    host = seed_machine(tmp_path)
    host.add_device("05:00.0", 0x10DE, 0x1B80, 0x030000, group=20)
    host.add_device("05:00.1", 0x8086, 0x10D3, 0x020000, group=20, driver="e1000e")
    with pytest.raises(PreflightRefusedError) as caught:
        plan_handoff([A("05:00.0")], snap(host))
    assert "network controller" in caught.value.message
    verdicts = {v.group: v for v in group_verdicts(snap(host))}
    assert verdicts[20].verdict is Passability.REFUSED


def test_several_reasons_are_reported_together(host: FakeHost) -> None:
    host.add_process(77, "Xorg", [host.paths.dev / "dri" / "card0"])
    with pytest.raises(PreflightRefusedError) as caught:
        plan_handoff([A("01:00.0"), A("00:1f.3")], snap(host))
    assert "group 13" in caught.value.message
    assert "pid 77 (Xorg)" in caught.value.message
    assert caught.value.fix is not None
    assert "kill 77" in caught.value.fix


def test_a_shared_nvidia_node_held_warns_in_the_plan_but_handoff_groups_still_passes(
    host: FakeHost,
) -> None:
    nvidia_gpu(host, "05:00.0", 0, group=20)
    host.add_process(4444, "python3", [host.paths.dev / "nvidia-uvm"])
    (warning,) = plan_handoff([A("05:00.0")], snap(host)).warnings
    assert warning.group == 20
    verdict = {v.group: v for v in group_verdicts(snap(host))}[20]
    assert verdict.verdict is Passability.PASSABLE
