"""One test per planner rule that has no published layout of its own, and init's
picture of the host (one topology reader; pinning and hugepages in its profile).

The rules are ARCHITECTURE.md's "The hand-off planner's rules"; the corpus
tests (test_layouts.py) pin them on real machines.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from handoff.base.errors import PreflightRefusedError
from handoff.checks import DoctorEnv, Verdict
from handoff.checks.devices import check_passthrough_devices
from handoff.init.choose import (
    GpuChoice,
    InitError,
    InitRequest,
    choose_cpu,
    choose_gpu,
    plan_init,
)
from handoff.init.facts import InitFacts
from handoff.init.gather import gather_facts, read_cpu
from handoff.init.render import render_profile
from handoff.pci.address import PciAddress
from handoff.pci.plan import Passability as G
from handoff.pci.plan import group_verdicts, plan_handoff
from handoff.pci.snapshot import take_snapshot
from handoff.profile import parse_profile
from tests.unit import fakecpu, layouts
from tests.unit.fakesysfs import FakeHost, standard_drivers

A = PciAddress.parse


def navi_behind_its_switch(root: Path) -> FakeHost:
    """A Radeon RX 6800 XT (Navi 21) behind the switch on the card itself, its HDMI audio
    in another group than its VGA function, as the issue reports it on some AM4 boards.
    No published listing with this split was found: built from the card's own topology
    (upstream port 1002:1478, downstream port 1002:1479, VGA 73bf, audio ab28)."""
    host = FakeHost(root)
    standard_drivers(host, vfio_loaded=True)
    host.add_driver("amdgpu-navi", "amdgpu_navi", ids={(0x1002, 0x73BF)}, kind="drm")
    host.add_driver("snd_hda_navi", "snd_hda_navi", ids={(0x1002, 0xAB28)}, kind="sound")
    host.add_device("00:03.1", 0x1022, 0x1483, 0x060400, group=16, header=0x01,
                    driver="pcieport")
    host.add_device("0a:00.0", 0x1002, 0x1478, 0x060400, group=17, parent="00:03.1",
                    header=0x01, driver="pcieport")
    host.add_device("0b:00.0", 0x1002, 0x1479, 0x060400, group=18, parent="0a:00.0",
                    header=0x01, driver="pcieport")
    host.add_device("0c:00.0", 0x1002, 0x73BF, 0x030000, group=19, parent="0b:00.0",
                    header=0x80, driver="amdgpu-navi")
    host.add_device("0c:00.1", 0x1002, 0xAB28, 0x040300, group=20, parent="0b:00.0",
                    driver="snd_hda_navi")
    host.add_device("00:02.0", 0x8086, 0x0412, 0x030000, group=2, driver="i915", boot_vga=True)
    fakecpu.write_sysfs(fakecpu.ryzen_8c16t_2ccx(), root)
    (host.paths.proc / "meminfo").write_text("MemTotal:       33554432 kB\n")
    return host


def facts(host: FakeHost) -> InitFacts:
    return gather_facts(host.paths, host.module_loadable, inputs=lambda: (), pci_ids=[],
                        ovmf_candidates=[])


# --------------------------------------------------------------------------- one card


def test_a_cards_audio_in_another_group_is_refused_alone_with_qemus_own_error(
    tmp_path: Path,
) -> None:
    host = navi_behind_its_switch(tmp_path)
    snapshot = take_snapshot(host.paths, host.module_loadable)
    with pytest.raises(PreflightRefusedError) as caught:
        plan_handoff([A("0c:00.0")], snapshot)
    assert "Cannot reset device 0000:0c:00.1, depends on group 20 which is not owned" in (
        caught.value.message
    )
    assert 'address = "0c:00.1"' in (caught.value.fix or "")
    both = plan_handoff([A("0c:00.0"), A("0c:00.1")], snapshot)
    assert both.group_ids == (19, 20)


def test_groups_and_init_take_the_card_across_its_groups(tmp_path: Path) -> None:
    host = navi_behind_its_switch(tmp_path)
    verdict = {v.group: v for v in group_verdicts(take_snapshot(host.paths,
                                                                host.module_loadable))}
    assert verdict[19].verdict is G.PASSABLE_WITH_CO_MEMBERS
    assert "0c:00.1 (IOMMU group 20)" in verdict[19].reason
    choice = choose_gpu(facts(host), None)
    assert isinstance(choice, GpuChoice)
    assert [d.address.short for d in choice.functions] == ["0c:00.0", "0c:00.1"]


def test_doctor_sees_the_other_group_of_a_profile_that_names_only_the_vga(
    tmp_path: Path,
) -> None:
    host = navi_behind_its_switch(tmp_path / "host")
    profile = parse_profile('[vm]\nname = "w"\nmemory = "8G"\n[[passthrough]]\n'
                            'address = "0c:00.0"\n', tmp_path / "w.toml")
    checks = check_passthrough_devices(DoctorEnv(host=host.paths, modules=tmp_path), profile)
    plan = {c.name: c for c in checks}["passthrough-plan"]
    assert plan.verdict is Verdict.FAIL
    assert "depends on group 20" in plan.detail


# --------------------------------------------------------------------------- the boot GPU


def test_a_dgpu_sharing_the_boot_gpus_group_is_never_written_into_a_profile(
    tmp_path: Path,
) -> None:
    # Old Intel boards without ACS on the CPU's ports: the boot GPU and the wanted card in
    # one group. Derived from z170-itx-gtx960 with both cards in group 1.
    host, _ = layouts.build("z170-itx-gtx960", tmp_path)
    group_dir = host.paths.sys / "kernel/iommu_groups"
    igpu = host.device_dir(A("00:02.0"))
    (igpu / "iommu_group").unlink()
    (group_dir / "2/devices/0000:00:02.0").unlink()
    (group_dir / "1/devices/0000:00:02.0").symlink_to(igpu)
    (igpu / "iommu_group").symlink_to(group_dir / "1")
    for console_bound in (False, True):  # video=efifb:off or not: the same verdict
        if console_bound:
            host.add_vtconsole(True)
        snapshot = take_snapshot(host.paths, host.module_loadable)
        assert snapshot.fbcon_bound is console_bound
        verdict = {v.group: v for v in group_verdicts(snapshot)}[1]
        assert verdict.verdict is G.REFUSED
        assert "also holds the host's boot GPU 00:02.0" in verdict.reason
        assert "a slot with an IOMMU group of its own" in (verdict.fix or "")
    for gpu in (None, "01:00.0"):
        with pytest.raises(InitError) as caught:
            choose_gpu(facts(host), gpu)
        assert "boot GPU" in caught.value.message


# --------------------------------------------------------------------------- init's CPU


def test_init_counts_a_hybrid_i9_12900k_as_16_cores_24_threads_and_no_smt_on_e_cores(
    tmp_path: Path,
) -> None:
    host, _ = layouts.build("z170-itx-gtx960", tmp_path, cpu=fakecpu.intel_hybrid_8p8e())
    cpu = read_cpu(host.paths)
    assert (cpu.logical, cpu.cores, cpu.p_cores, cpu.e_cores) == (24, 16, 8, 8)
    choice = choose_cpu(facts(host), None)
    # A guest's cores are all alike: 7 P-cores with SMT, the host keeps a P-core and
    # the E-cores; never "12 cores x 2 threads".
    assert (choice.cpus, choice.cores, choice.threads) == (14, 7, 2)
    assert "16 cores (8 P-cores x 2 threads + 8 E-cores x 1 thread)" in choice.reason


def test_init_and_tuning_read_one_topology(tmp_path: Path) -> None:
    import handoff.init.gather as gather

    assert not hasattr(gather, "read_cpu_topology")
    host, _ = layouts.build("z170-itx-gtx960", tmp_path, cpu=fakecpu.ryzen_8c16t_2ccx())
    cpu = read_cpu(host.paths)
    assert (cpu.logical, cpu.cores, cpu.threads_per_core) == (16, 8, 2)


# --------------------------------------------------------------------------- init's tuning


def _hugepages(host: FakeHost, available_mib: int) -> None:
    pool = host.paths.sys / "kernel/mm/hugepages/hugepages-2048kB"
    pool.mkdir(parents=True)
    for name in ("nr_hugepages", "free_hugepages", "resv_hugepages"):
        (pool / name).write_text("0\n")
    (host.paths.proc / "meminfo").write_text(
        f"MemTotal:       {32 * 1024 * 1024} kB\nMemAvailable:   {available_mib * 1024} kB\n"
    )


def test_init_pins_and_uses_hugepages_where_the_host_allows(tmp_path: Path) -> None:
    host, _ = layouts.build("z170-itx-gtx960", tmp_path)
    _hugepages(host, available_mib=30 * 1024)
    text = render_profile(plan_init(facts(host), InitRequest("win10")))
    assert '\n[cpu]\npin = "auto"\n' in text
    assert '\n[memory]\nhugepages = "2M"\n' in text
    loaded = parse_profile(text, tmp_path / "win10.toml")
    assert loaded.memory.hugepages.kib == 2048


def test_init_leaves_hugepages_commented_when_the_memory_is_not_free(tmp_path: Path) -> None:
    host, _ = layouts.build("z170-itx-gtx960", tmp_path)
    _hugepages(host, available_mib=4 * 1024)
    text = render_profile(plan_init(facts(host), InitRequest("win10")))
    assert '# hugepages = "2M"' in text
    assert "\n[memory]\n" not in text
    assert "hugepagesz=2M hugepages=" in text
