"""`groups`, `init` and `doctor` on real machines' published IOMMU layouts (tests/data/layouts).

Each machine is its owner's published listing turned into a fake sysfs tree
by :func:`tests.unit.layouts.build`. Each test pins what a VFIO expert would
say about that machine, and the comment says why. The files' headers name
the source, the owner's outcome and the card they wanted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from handoff.base.errors import PreflightRefusedError
from handoff.checks import Check, DoctorEnv, Verdict
from handoff.checks.devices import check_passthrough_devices
from handoff.init.choose import GpuChoice, InitError, choose_gpu
from handoff.init.facts import InitFacts
from handoff.init.gather import gather_facts
from handoff.pci.address import PciAddress
from handoff.pci.commands import run_groups
from handoff.pci.plan import GroupVerdict, HandoffPlan, HostSnapshot, group_verdicts, plan_handoff
from handoff.pci.plan import Passability as G
from handoff.pci.rules import ACS_OVERRIDE
from handoff.pci.snapshot import take_snapshot
from handoff.profile import parse_profile
from tests.unit import layouts
from tests.unit.fakesysfs import FakeHost

A = PciAddress.parse


def machine(name: str, tmp_path: Path, **kw: object) -> FakeHost:
    host, _ = layouts.build(name, tmp_path / "host", **kw)  # type: ignore[arg-type]
    return host


def snap(host: FakeHost) -> HostSnapshot:
    return take_snapshot(host.paths, host.module_loadable)


def verdicts(host: FakeHost) -> dict[int, GroupVerdict]:
    return {v.group: v for v in group_verdicts(snap(host))}


def plan(host: FakeHost, *addresses: str, handover: bool = False) -> HandoffPlan:
    return plan_handoff([A(a) for a in addresses], snap(host), handover=handover)


def refusal(host: FakeHost, *addresses: str) -> PreflightRefusedError:
    with pytest.raises(PreflightRefusedError) as caught:
        plan(host, *addresses)
    return caught.value


def facts(host: FakeHost) -> InitFacts:
    return gather_facts(host.paths, host.module_loadable, inputs=lambda: (), pci_ids=[],
                        ovmf_candidates=[])


def init_gpu(host: FakeHost, gpu: str | None = None) -> GpuChoice:
    choice = choose_gpu(facts(host), gpu)
    assert isinstance(choice, GpuChoice)
    return choice


def init_refusal(host: FakeHost, gpu: str | None = None) -> InitError:
    with pytest.raises(InitError) as caught:
        choose_gpu(facts(host), gpu)
    return caught.value


def shorts(choice: GpuChoice) -> list[str]:
    return [d.address.short for d in choice.functions]


def doctor(host: FakeHost, tmp_path: Path, *addresses: str) -> dict[str, Check]:
    body = "".join(f'[[passthrough]]\naddress = "{a}"\n' for a in addresses)
    profile = parse_profile(f'[vm]\nname = "win"\nmemory = "8G"\n{body}', tmp_path / "win.toml")
    env = DoctorEnv(host=host.paths, modules=tmp_path / "modules")
    return {c.name: c for c in check_passthrough_devices(env, profile)}


def device_check(checks: dict[str, Check], address: str) -> Check:
    return checks[f"device:{A(address)}"]


# --------------------------------------------------------------------------- the corpus


def test_the_corpus_has_fifteen_published_machines_each_with_its_source() -> None:
    parsed = [layouts.parse(name) for name in layouts.names()]
    published = [p for p in parsed if not p.derived]
    assert len(published) >= 15
    for p in parsed:
        assert p.header["source"].split()[0].startswith("https://") or p.derived, p.name
        assert p.header.get("owner reported"), p.name
        assert "wanted" in p.header, p.name
        assert p.functions, p.name
    # A derived variant says so where the machine is named, never passes for a listing.
    assert {p.name for p in parsed if p.derived} == {
        "derived-82576-sriov", "derived-vmd-domain-10000"
    }


def test_the_builder_lays_the_tree_out_as_the_kernel_does(tmp_path: Path) -> None:
    host = machine("epyc-rome-a100-dummy-host-bridge", tmp_path)
    sys = host.paths.sys
    gpu = (sys / "bus/pci/devices/0000:41:00.0").resolve()
    # Behind its root port, in its group, with the group linking back.
    assert gpu == sys / "devices/pci0000:00/0000:40:03.1/0000:41:00.0"
    assert (gpu / "iommu_group").resolve() == sys / "kernel/iommu_groups/44"
    assert (sys / "kernel/iommu_groups/44/devices/0000:41:00.0").resolve() == gpu
    assert (gpu / "class").read_text() == "0x030200\n"
    assert (gpu / "driver").resolve().name == "nvidia"
    assert not (sys / "bus/pci/devices/0000:40:03.0/driver").exists()  # the dummy host bridge
    assert (sys / "bus/pci/devices/0000:40:03.1/config").read_bytes()[0x0E] == 0x01


def test_the_builder_links_sr_iov_and_wide_domains(tmp_path: Path) -> None:
    sriov = machine("derived-82576-sriov", tmp_path / "a")
    devices = sriov.paths.sys / "bus/pci/devices"
    assert (devices / "0000:02:10.0/physfn").resolve() == (devices / "0000:02:00.0").resolve()
    assert (devices / "0000:02:00.0/virtfn1").resolve() == (devices / "0000:02:10.2").resolve()
    assert (devices / "0000:02:00.0/sriov_numvfs").read_text() == "2\n"
    assert snap(sriov).devices[A("02:10.0")].physfn == A("02:00.0")
    vmd = machine("derived-vmd-domain-10000", tmp_path / "b")
    nvme = (vmd.paths.sys / "bus/pci/devices/10000:e1:00.0").resolve()
    assert nvme.parent.name == "10000:e0:06.0"
    assert nvme.parent.parent.name == "pci10000:e0"


# --------------------------------------------------------------------------- Intel, older


def test_z170_gtx960_passes_with_its_audio_and_the_chipset_usb_stays(tmp_path: Path) -> None:
    host = machine("z170-itx-gtx960", tmp_path)
    v = verdicts(host)
    # The CPU's x16 root port isolates the card: VGA + HDMI audio, the bridge stays.
    assert v[1].verdict is G.PASSABLE_WITH_CO_MEMBERS
    assert v[1].co_members == (A("01:00.1"),)
    # The HD 530 runs the host's display: never passable without handover.
    assert v[2].verdict is G.REFUSED
    assert "boot GPU" in v[2].reason
    # The chipset's xHCI carries the host's keyboard: host-needed, with the fix.
    assert v[3].verdict is G.REFUSED
    assert "USB controller" in v[3].reason
    assert "lsusb -t" in (v[3].fix or "")
    assert shorts(init_gpu(host)) == ["01:00.0", "01:00.1"]
    checks = doctor(host, tmp_path, "01:00.0", "01:00.1")
    assert device_check(checks, "01:00.0").verdict is Verdict.OK
    assert checks["passthrough-plan"].verdict is Verdict.OK


def test_x58_only_gpu_is_the_boot_gpu_and_the_ich10_group_is_the_hosts(tmp_path: Path) -> None:
    host = machine("x58-xeon5600-gtx1060", tmp_path)
    v = verdicts(host)
    # X58 has no iGPU: the GTX 1060 is what the host displays on.
    assert v[11].verdict is G.REFUSED
    assert "boot GPU" in v[11].reason
    assert v[10].verdict is G.REFUSED
    assert "ISA/LPC bridge" in v[10].reason
    error = init_refusal(host)
    assert "single-GPU host" in (error.fix or "")


def test_haswell_laptop_muxless_gtx765m_passes_with_its_hdmi_audio(tmp_path: Path) -> None:
    host = machine("haswell-laptop-gtx765m", tmp_path)
    v = verdicts(host)
    # A muxless 3D controller behind the CPU port: its own group, with its HDMI audio.
    assert v[1].verdict is G.PASSABLE_WITH_CO_MEMBERS
    assert shorts(init_gpu(host)) == ["01:00.0", "01:00.1"]
    # The Wi-Fi and the Killer NIC are the host's network.
    assert v[12].verdict is G.REFUSED
    assert v[13].verdict is G.REFUSED


# --------------------------------------------------------------------------- NVIDIA, 4 functions


@pytest.mark.parametrize(
    ("name", "gpu"),
    [("comet-lake-gtx1660super-4fn", "01:00.0"), ("turing-gtx1660super-group15", "09:00.0")],
)
def test_turing_cards_go_with_all_four_functions_their_usb_included(
    tmp_path: Path, name: str, gpu: str
) -> None:
    host = machine(name, tmp_path)
    address = A(gpu)
    group = snap(host).devices[address].iommu_group
    assert group is not None
    v = verdicts(host)[group]
    # The card's own USB-C controller (same slot, same vendor) is the card's, not the
    # host's: the owner of group 15 only got it working once all four were on vfio-pci.
    assert v.verdict is G.PASSABLE_WITH_CO_MEMBERS
    assert len(v.co_members) == 3
    choice = init_gpu(host)
    assert [d.address.function for d in choice.functions] == [0, 1, 2, 3]
    moved = plan(host, *(d.address.short for d in choice.functions))
    assert len(moved.detach_order) == 4


def test_skylake_takes_the_hd530_when_the_geforce_is_primary(tmp_path: Path) -> None:
    host = machine("skylake-hd530-gtx1660-4fn", tmp_path)
    v = verdicts(host)
    # The GeForce is the boot GPU (the iGPU shows as class 0380): its group is the host's.
    assert v[2].verdict is G.REFUSED
    assert "boot GPU" in v[2].reason
    assert v[0].verdict is G.PASSABLE
    assert shorts(init_gpu(host)) == ["00:02.0"]


# --------------------------------------------------------------------------- single GPU


@pytest.mark.parametrize("fbcon", [True, False, None])
def test_single_gpu_rtx3070ti_is_refused_whatever_the_console(
    tmp_path: Path, fbcon: bool | None
) -> None:
    # video=efifb:off unbinds the console, not the host's only display: the group holding
    # the boot GPU is refused either way, and only [host_display] handover takes it.
    host = machine("comet-lake-rtx3070ti-single-gpu", tmp_path, fbcon_bound=fbcon)
    v = verdicts(host)
    assert v[1].verdict is G.REFUSED
    assert "01:00.0 is the boot GPU" in v[1].reason
    assert "[host_display] handover = true" in (v[1].fix or "")
    assert "boot GPU" in refusal(host, "01:00.0", "01:00.1").message
    moved = plan(host, "01:00.0", "01:00.1", handover=True)
    assert [d.address.short for d in moved.detach_order] == ["01:00.1", "01:00.0"]
    assert "single-GPU host" in (init_refusal(host).fix or "")
    checks = doctor(host, tmp_path, "01:00.0", "01:00.1")
    assert device_check(checks, "01:00.0").verdict is Verdict.FAIL
    assert checks["passthrough-plan"].verdict is Verdict.FAIL


# --------------------------------------------------------------------------- AMD platforms


def test_epyc_a100_group_with_the_dummy_host_bridge_is_viable_as_it_is(tmp_path: Path) -> None:
    host = machine("epyc-rome-a100-dummy-host-bridge", tmp_path)
    v = verdicts(host)
    # 40:03.0 (1022:1482, no driver) and the GPP bridge need nothing: VFIO counts a
    # driverless device as viable. Only the A100 moves; no allow_in_group is needed.
    assert v[44].verdict is G.PASSABLE
    moved = plan(host, "41:00.0")
    assert [d.address.short for d in moved.detach_order] == ["41:00.0"]
    assert {d.address.short for d in moved.groups[0].staying} == {"40:03.0", "40:03.1"}
    assert "40:03.0 Host bridge [1022:1482] (no driver): stays as it is" in moved.render()
    assert shorts(init_gpu(host)) == ["41:00.0"]
    checks = doctor(host, tmp_path, "41:00.0")
    assert device_check(checks, "41:00.0").verdict is Verdict.OK
    assert "move 41:00.0 to vfio-pci" in checks["passthrough-plan"].detail


def test_b450m_rx580_passes_alone_and_the_apu_stays_the_hosts(tmp_path: Path) -> None:
    host = machine("b450m-mortar-rx580-raven", tmp_path)
    v = verdicts(host)
    assert v[8].verdict is G.PASSABLE
    # The dummy host bridge stays as it is; the SATA beside it is the host's disks.
    assert v[4].verdict is G.REFUSED
    assert "storage controller" in v[4].reason
    # The APU's graphics boot the host, and its audio sits with the CPU's USB.
    assert v[11].verdict is G.REFUSED
    assert "boot GPU" in v[11].reason
    assert v[12].verdict is G.REFUSED
    assert shorts(init_gpu(host)) == ["10:00.0"]


def test_x570_chipset_usb_is_the_hosts_unless_asked_for_by_address(tmp_path: Path) -> None:
    host = machine("x570-matisse-usb-rtx3060", tmp_path)
    v = verdicts(host)
    # The owner's keyboard may hang off the CPU's xHCI: refused as a co-member, with a fix.
    assert v[32].verdict is G.REFUSED
    assert "USB controller" in v[32].reason
    # Asked for by address (the usual way to give a guest a whole USB controller): fine.
    assert [d.address.short for d in plan(host, "0c:00.3").detach_order] == ["0c:00.3"]
    check = device_check(doctor(host, tmp_path, "0c:00.3"), "0c:00.3")
    assert check.verdict is Verdict.OK
    assert "the profile asks for it by address" in check.detail


def test_gmktec_two_rtl8125_ports_are_the_hosts_network(tmp_path: Path) -> None:
    host = machine("gmktec-m5pro-renoir", tmp_path)
    v = verdicts(host)
    assert v[10].verdict is G.REFUSED
    assert v[11].verdict is G.REFUSED
    # A router guest asks for one port by address and gets it alone.
    assert [d.address.short for d in plan(host, "02:00.0").detach_order] == ["02:00.0"]
    assert "no display controller" in init_refusal(host).message


# --------------------------------------------------------------------------- laptops


def test_cezanne_laptop_audio_shares_the_only_gpus_group_and_only_acs_override_splits_it(
    tmp_path: Path,
) -> None:
    host = machine("cezanne-laptop-14acn6", tmp_path)
    error = refusal(host, "04:00.1")
    # The owner's audio sits with the only GPU (the host's screen) and the APU's USB.
    assert "04:00.0 Host" not in error.message
    assert "boot GPU" in error.message
    assert "USB controller" in error.message
    # Nothing but the ACS override can split a soldered APU's group; say what it costs.
    assert ACS_OVERRIDE in (error.fix or "")
    assert "isolation" in (error.fix or "")
    assert "single-GPU host" in (init_refusal(host).fix or "")
    checks = doctor(host, tmp_path, "04:00.1")
    assert device_check(checks, "04:00.1").verdict is Verdict.FAIL


# --------------------------------------------------------------------------- SR-IOV


def test_connectx4_vfs_in_the_pfs_group_are_refused_with_the_acs_override(tmp_path: Path) -> None:
    host = machine("c246-connectx4lx-sriov", tmp_path)
    error = refusal(host, "01:00.2")
    # The VFs share the PFs' group (no ACS on the i5-8400T's port): taking one takes the
    # host's network ports. The other VFs are not the host's and are not named.
    assert "01:00.0 Ethernet controller, a network controller" in error.message
    assert "01:00.3 Ethernet controller, a network" not in error.message
    assert ACS_OVERRIDE in (error.fix or "")


def test_a_virtual_function_in_its_own_group_is_passable(tmp_path: Path) -> None:
    cx5 = machine("skylake-sp-connectx5-vf", tmp_path / "cx5")
    # Made to be given to guests; its PF (not in the excerpt) keeps the host's network.
    assert verdicts(cx5)[98].verdict is G.PASSABLE
    assert device_check(doctor(cx5, tmp_path, "86:00.1"), "86:00.1").verdict is Verdict.OK
    igb = machine("derived-82576-sriov", tmp_path / "igb")
    v = verdicts(igb)
    assert v[22].verdict is G.PASSABLE
    assert v[23].verdict is G.PASSABLE
    assert v[20].verdict is G.REFUSED
    assert "network controller" in v[20].reason
    assert [d.address.short for d in plan(igb, "02:10.0").detach_order] == ["02:10.0"]


# --------------------------------------------------------------------------- two identical cards


def test_two_identical_rtx_a5000_init_lists_both_and_takes_the_one_named(tmp_path: Path) -> None:
    host = machine("icelake-sp-two-rtx-a5000", tmp_path)
    v = verdicts(host)
    assert v[45].verdict is G.PASSABLE_WITH_CO_MEMBERS
    assert v[49].verdict is G.PASSABLE_WITH_CO_MEMBERS
    error = init_refusal(host)
    assert "--gpu 4f:00.0" in error.message
    assert "--gpu 52:00.0" in error.message
    assert shorts(init_gpu(host, "4f:00.0")) == ["4f:00.0", "4f:00.1"]
    # Driver_override per device, never new_id: the twin stays on its driver.
    moved = plan(host, "4f:00.0", "4f:00.1")
    assert {d.address.short for d in moved.detach_order} == {"4f:00.0", "4f:00.1"}


# --------------------------------------------------------------------------- VMD domain


def test_a_vmd_domain_is_listed_in_its_group_and_init_still_works(tmp_path: Path) -> None:
    host = machine("derived-vmd-domain-10000", tmp_path)
    lines: list[str] = []
    assert run_groups(host.paths, host, as_json=False, out=lines.append) == 0
    text = "\n".join(lines)
    # Domain 10000 has five digits: its NVMe stays in group 7 with the VMD endpoint and
    # nobody is told to "retype" an address they never typed.
    assert "  10000:e1:00.0  Non-Volatile memory controller" in text
    assert "is not a PCI address" not in text
    assert verdicts(host)[7].verdict is G.REFUSED
    assert [d.address.function for d in init_gpu(host).functions] == [0, 1, 2, 3]


# --------------------------------------------------------------------------- every machine

# (layout, the device doctor is asked about, doctor's verdict, what init takes or None
# when it refuses): each row is what an expert says about that machine, and why.
EVERY_MACHINE = [
    # The GTX 960's group is the card and its root port: passable; init takes both functions.
    ("z170-itx-gtx960", "01:00.0", Verdict.OK, ["01:00.0", "01:00.1"]),
    # The RX 580 is alone in group 8 (the listing shows no audio function).
    ("b450m-mortar-rx580-raven", "10:00.0", Verdict.OK, ["10:00.0"]),
    # The dummy host bridge and the GPP bridge stay as they are: only the A100 moves.
    ("epyc-rome-a100-dummy-host-bridge", "41:00.0", Verdict.OK, ["41:00.0"]),
    # The only GPU is the boot GPU: refused without [host_display] handover.
    ("comet-lake-rtx3070ti-single-gpu", "01:00.0", Verdict.FAIL, None),
    # Turing: VGA, audio, the card's own USB-C and UCSI go together.
    ("comet-lake-gtx1660super-4fn", "01:00.0", Verdict.OK,
     ["01:00.0", "01:00.1", "01:00.2", "01:00.3"]),
    ("turing-gtx1660super-group15", "09:00.0", Verdict.OK,
     ["09:00.0", "09:00.1", "09:00.2", "09:00.3"]),
    # The GeForce boots the host; the HD 530 (class 0380) is alone and passable.
    ("skylake-hd530-gtx1660-4fn", "00:02.0", Verdict.OK, ["00:02.0"]),
    # A muxless laptop dGPU behind the CPU port, with its HDMI audio: passable.
    ("haswell-laptop-gtx765m", "01:00.0", Verdict.OK, ["01:00.0", "01:00.1"]),
    # The audio shares the only GPU's (the host's screen) group and the APU's USB.
    ("cezanne-laptop-14acn6", "04:00.1", Verdict.FAIL, None),
    # The VF shares the PFs' group: the host's network would go with it. No GPU for init.
    ("c246-connectx4lx-sriov", "01:00.2", Verdict.FAIL, None),
    # Two identical cards, both passable: doctor passes the named one, init will not guess.
    ("icelake-sp-two-rtx-a5000", "4f:00.0", Verdict.OK, None),
    # A VF alone in its group: passable. No GPU in the excerpt for init.
    ("skylake-sp-connectx5-vf", "86:00.1", Verdict.OK, None),
    # X58 has no iGPU: the GTX 1060 is the boot GPU; init points to single-GPU mode.
    ("x58-xeon5600-gtx1060", "02:00.0", Verdict.FAIL, None),
    # The CPU's xHCI asked for by address: the person gives it up knowingly. No GPU listed.
    ("x570-matisse-usb-rtx3060", "0c:00.3", Verdict.OK, None),
    # One of the two 2.5GbE ports asked for by address (a router guest). No GPU listed.
    ("gmktec-m5pro-renoir", "02:00.0", Verdict.OK, None),
    # The VMD domain does not disturb the GPU's group (derived variant).
    ("derived-vmd-domain-10000", "01:00.0", Verdict.OK,
     ["01:00.0", "01:00.1", "01:00.2", "01:00.3"]),
    # An 82576 VF behind an ACS port: passable alone (derived variant). No GPU for init.
    ("derived-82576-sriov", "02:10.0", Verdict.OK, None),
]


def test_every_layout_has_a_row() -> None:
    assert sorted(row[0] for row in EVERY_MACHINE) == layouts.names()


@pytest.mark.parametrize(("name", "device", "verdict", "taken"), EVERY_MACHINE,
                         ids=[row[0] for row in EVERY_MACHINE])
def test_doctor_and_init_on_every_machine(
    tmp_path: Path, name: str, device: str, verdict: Verdict, taken: list[str] | None
) -> None:
    host = machine(name, tmp_path)
    assert device_check(doctor(host, tmp_path, device), device).verdict is verdict
    if taken is None:
        init_refusal(host)
    else:
        assert shorts(init_gpu(host)) == taken
