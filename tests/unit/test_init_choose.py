"""`handoff init`'s choice rules on real hosts' sysfs layouts (fake trees, see fakesysfs).

The GPU rule is judged by the GPU engine's own group verdicts over the very
snapshot `handoff groups` takes; these tests pin what `init` adds on top:
never the boot GPU, never a guess, the whole group, allow_in_group only when
asked for, and the CPU/memory arithmetic stated in handoff.init.choose.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from handoff.init.choose import (
    GpuChoice,
    InitError,
    InitRequest,
    NoGpu,
    choose_cpu,
    choose_gpu,
    choose_memory,
    plan_init,
)
from handoff.init.facts import CpuTopology, InitFacts
from handoff.init.gather import gather_facts
from tests.unit.fakesysfs import (
    FakeHost,
    add_cpus,
    add_meminfo,
    bmc_two_dgpu_host,
    boot_gpu_only_host,
    dgpu_with_nic_host,
    igpu_dgpu_host,
    iommu_off_host,
    lookalike_host,
    two_dgpu_host,
)

PCI_IDS = """\
# a few lines of pci.ids
1002  Advanced Micro Devices, Inc. [AMD/ATI]
\t67b0  Hawaii XT / Grenada XT [Radeon R9 290X/390X]
\t67df  Ellesmere [Radeon RX 470/480/570/570X/580/580X/590]
\t\t1002 0b37  Radeon RX 580
10de  NVIDIA Corporation
\t1c03  GP106 [GeForce GTX 1060 6GB]
\t2206  GA102 [GeForce RTX 3080]
1a03  ASPEED Technology, Inc.
\t2000  ASPEED Graphics Family
8086  Intel Corporation
\t0412  Xeon E3-1200 v3/4th Gen Core Processor Integrated Graphics Controller
C 03  Display controller
\t00  VGA compatible controller
"""


def facts_of(build: Callable[[Path], FakeHost], tmp_path: Path) -> InitFacts:
    host = build(tmp_path / "host")
    ids = tmp_path / "pci.ids"
    ids.write_text(PCI_IDS)
    return gather_facts(host.paths, host.module_loadable, inputs=lambda: (), pci_ids=[ids],
                        monitors=lambda: None,
                        ovmf_candidates=[], descriptor_dirs=())


def chosen(facts: InitFacts, gpu: str | None = None) -> GpuChoice:
    choice = choose_gpu(facts, gpu)
    assert isinstance(choice, GpuChoice)
    return choice


def shorts(choice: GpuChoice) -> list[str]:
    return [d.address.short for d in choice.functions]


# --------------------------------------------------------------------------- GPU: one per host


def test_igpu_and_dgpu_takes_the_dgpu_with_its_hdmi_audio_never_the_boot_igpu(
    tmp_path: Path,
) -> None:
    choice = chosen(facts_of(igpu_dgpu_host, tmp_path))
    assert shorts(choice) == ["01:00.0", "01:00.1"]  # the bridge 00:01.0 stays with the host
    assert choice.group == 1
    assert choice.allow_in_group == ()
    assert "00:02.0 not: it is the boot GPU" in choice.reason
    assert "Radeon R9 290X" in choice.gpu.describe()  # named from pci.ids


def test_two_dgpus_takes_the_one_that_is_not_the_boot_gpu(tmp_path: Path) -> None:
    choice = chosen(facts_of(two_dgpu_host, tmp_path))
    assert shorts(choice) == ["0b:00.0", "0b:00.1"]
    assert "0a:00.0 not: it is the boot GPU" in choice.reason


def test_two_passable_dgpus_are_refused_and_both_listed_with_the_flag_to_pass(
    tmp_path: Path,
) -> None:
    with pytest.raises(InitError) as refused:
        choose_gpu(facts_of(bmc_two_dgpu_host, tmp_path), None)
    message = refused.value.message
    assert "2 GPUs can be passed through; handoff init will not guess" in message
    assert "0a:00.0 VGA compatible controller [1002:67df] Advanced Micro Devices" in message
    assert "(driver amdgpu-polaris, boot_vga 0): --gpu 0a:00.0" in message
    assert "GeForce RTX 3080] (driver nouveau, boot_vga 0): --gpu 0b:00.0" in message
    assert "01:00.0" not in message  # the BMC's boot VGA is no candidate
    assert refused.value.fix is not None
    assert "--gpu ADDRESS" in refused.value.fix


def test_with_several_candidates_gpu_picks_one_and_its_group(tmp_path: Path) -> None:
    choice = chosen(facts_of(bmc_two_dgpu_host, tmp_path), "0a:00.0")
    assert shorts(choice) == ["0a:00.0", "0a:00.1"]


def test_a_dgpu_sharing_its_group_with_the_nic_is_not_taken_and_the_reason_says_so(
    tmp_path: Path,
) -> None:
    with pytest.raises(InitError) as refused:
        choose_gpu(facts_of(dgpu_with_nic_host, tmp_path), None)
    message = refused.value.message
    assert "26:00.0 VGA compatible controller [10de:1c03] NVIDIA Corporation GP106" in message
    assert "IOMMU group 5 also holds 25:00.0 Ethernet controller (a network controller" in message
    assert "--gpu 26:00.0 (the profile then lists it in allow_in_group)" in message
    assert "30:00.0" in message  # the APU's graphics: the boot GPU
    assert "it is the boot GPU" in message


def test_an_explicit_gpu_sharing_with_the_nic_writes_allow_in_group_for_the_nic_only(
    tmp_path: Path,
) -> None:
    choice = chosen(facts_of(dgpu_with_nic_host, tmp_path), "26:00.0")
    assert shorts(choice) == ["26:00.0", "26:00.1"]  # the NIC is not given to the guest
    assert [d.address.short for d in choice.allow_in_group] == ["25:00.0"]
    assert "the host loses 25:00.0" in choice.reason


def test_iommu_off_says_so_with_the_fix_and_the_gpu_less_way_out(tmp_path: Path) -> None:
    with pytest.raises(InitError) as refused:
        choose_gpu(facts_of(iommu_off_host, tmp_path), None)
    assert "the IOMMU is off" in refused.value.message
    assert refused.value.fix is not None
    assert "intel_iommu=on" in refused.value.fix
    assert "--gpu none" in refused.value.fix


def test_only_the_boot_gpu_explains_and_points_to_single_gpu_mode(tmp_path: Path) -> None:
    with pytest.raises(InitError) as refused:
        choose_gpu(facts_of(boot_gpu_only_host, tmp_path), None)
    assert "0a:00.0 VGA compatible controller" in refused.value.message
    assert "it is the boot GPU (boot_vga=1)" in refused.value.message
    assert refused.value.fix is not None
    assert "single-GPU host: read profiles/single-gpu.md" in refused.value.fix


def test_an_explicit_boot_gpu_is_refused_too(tmp_path: Path) -> None:
    with pytest.raises(InitError) as refused:
        choose_gpu(facts_of(igpu_dgpu_host, tmp_path), "00:02.0")
    assert "boot GPU" in refused.value.message
    assert "single-gpu.md" in (refused.value.fix or "")


@pytest.mark.parametrize(
    ("gpu", "says"),
    [
        ("07:00.0", "there is no PCI device 0000:07:00.0 on this host"),
        ("seven", "--gpu seven: not a PCI address"),
        ("00:1f.2", "is not a display controller"),
    ],
)
def test_a_bad_gpu_is_refused_with_the_fix(tmp_path: Path, gpu: str, says: str) -> None:
    with pytest.raises(InitError) as refused:
        choose_gpu(facts_of(igpu_dgpu_host, tmp_path), gpu)
    assert says in refused.value.message
    assert refused.value.fix


def test_gpu_none_writes_no_passthrough_even_with_the_iommu_off(tmp_path: Path) -> None:
    assert isinstance(choose_gpu(facts_of(iommu_off_host, tmp_path), "none"), NoGpu)


def test_a_gpu_in_use_is_still_chosen_with_a_note_naming_the_holder(tmp_path: Path) -> None:
    host = lookalike_host(tmp_path / "host")
    card = next((host.paths.dev / "dri").glob("card*"))
    host.add_process(4242, "Xorg", [card])
    add_cpus(host, cores=2)
    add_meminfo(host, 2048)
    facts = gather_facts(host.paths, host.module_loadable, inputs=lambda: (), pci_ids=[],
                         ovmf_candidates=[], descriptor_dirs=())
    choice = chosen(facts)
    assert shorts(choice) == ["00:06.0", "00:06.1"]  # never the e1000e or the ICH9 group
    assert any("pid 4242 (Xorg)" in note for note in choice.notes)


# --------------------------------------------------------------------------- CPU and memory


def test_the_host_keeps_one_physical_core_and_the_guest_follows_its_smt(tmp_path: Path) -> None:
    cpu = choose_cpu(facts_of(two_dgpu_host, tmp_path), None)  # 12 cores x 2 threads
    assert (cpu.cpus, cpu.sockets, cpu.cores, cpu.threads) == (22, 1, 11, 2)
    cpu = choose_cpu(facts_of(igpu_dgpu_host, tmp_path / "b"), None)  # 4 x 2
    assert (cpu.cpus, cpu.cores, cpu.threads) == (6, 3, 2)


def test_a_host_without_smt_keeps_one_cpu_and_a_one_core_host_shares_it(tmp_path: Path) -> None:
    facts = facts_of(igpu_dgpu_host, tmp_path)
    no_smt = InitFacts(facts.pci, CpuTopology(logical=2), facts.memory_mib)
    assert (choose_cpu(no_smt, None).cpus, choose_cpu(no_smt, None).threads) == (1, 1)
    single = InitFacts(facts.pci, CpuTopology(logical=2, threads_per_core=2), facts.memory_mib)
    assert choose_cpu(single, None).cpus == 1


def test_cpus_more_than_the_host_has_is_refused_with_the_limit(tmp_path: Path) -> None:
    facts = facts_of(igpu_dgpu_host, tmp_path)
    with pytest.raises(InitError) as refused:
        choose_cpu(facts, 9)
    assert refused.value.message == "--cpus 9: this host has 8 logical CPUs"
    assert "between 1 and 8" in (refused.value.fix or "")
    odd = choose_cpu(facts, 3)
    assert (odd.cores, odd.threads) == (3, 1)
    even = choose_cpu(facts, 4)
    assert (even.cores, even.threads) == (2, 2)


@pytest.mark.parametrize(
    ("total", "guest"),
    [(16 * 1024 - 230, 12032), (64 * 1024 - 500, 48640), (4096, 2048), (2048, 1024)],
)
def test_memory_leaves_the_host_max_2g_or_a_quarter(
    tmp_path: Path, total: int, guest: int
) -> None:
    facts = facts_of(igpu_dgpu_host, tmp_path)
    memory = choose_memory(InitFacts(facts.pci, facts.cpu, total), None)
    assert memory.mib == guest
    assert memory.mib % 256 == 0
    assert total - memory.mib >= min(2048, total // 2)


@pytest.mark.parametrize("text", ["8 gigs", "0", "-1G", "lots"])
def test_a_memory_size_that_does_not_parse_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(InitError) as refused:
        choose_memory(facts_of(igpu_dgpu_host, tmp_path), text)
    assert f"--memory {text}: not a size" == refused.value.message
    assert "8G" in (refused.value.fix or "")


def test_memory_as_large_as_the_host_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InitError) as refused:
        choose_memory(facts_of(igpu_dgpu_host, tmp_path), "16G")
    assert "this host has 16154 MiB of RAM in all" in refused.value.message


def test_the_whole_plan_of_the_seed_machine(tmp_path: Path) -> None:
    facts = facts_of(igpu_dgpu_host, tmp_path)
    plan = plan_init(facts, InitRequest(name="win10"))
    assert isinstance(plan.gpu, GpuChoice)
    assert plan.cpu.cpus == 6
    assert plan.memory.text == "12032M"
