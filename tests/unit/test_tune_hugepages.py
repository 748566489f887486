"""Hugepages: pages = RAM / size, the pool(s) to raise, and the check after raising."""

import pytest

from handoff.base.errors import HugepagesRefusedError
from handoff.tune.hugepages import HugepagePlan, PoolTarget, check_raised, plan_hugepages
from handoff.tune.model import HugepagePool, HugepageSize, PagePool
from tests.unit import fakecpu
from tests.unit.fakecpu import Machine

FLAGS = fakecpu.X86_FLAGS


def pools(m: Machine) -> tuple[HugepagePool, ...]:
    return m.tuning.hugepages


def test_none_plans_nothing() -> None:
    m = fakecpu.intel_4c8t()
    assert plan_hugepages(8192, HugepageSize.NONE, pools(m), FLAGS, m.topology) is None


def test_pages_are_ram_over_size_in_the_global_pool_on_a_one_node_host() -> None:
    m = fakecpu.intel_4c8t()
    plan = plan_hugepages(
        8192, HugepageSize.SIZE_2M, pools(m), FLAGS, m.topology, frozenset({1, 5})
    )
    assert plan is not None
    assert plan.pages == 4096
    assert plan.targets == (PoolTarget(None, before=0, target=4096, wanted=4096),)
    assert plan.restore == {None: 0}
    assert plan.reasons[0] == "4096 pages of 2M for 8192 MiB (one NUMA node)"


def test_free_pages_reserved_at_boot_are_used_before_raising() -> None:
    m = fakecpu.machine(
        "boot-reserved",
        [fakecpu.CoreDef((0,), 0), fakecpu.CoreDef((1,), 1)],
        hugepages={1048576: (10, 6)},
    )
    plan = plan_hugepages(8192, HugepageSize.SIZE_1G, pools(m), FLAGS, m.topology)
    assert plan is not None
    assert plan.targets == (PoolTarget(None, before=10, target=12, wanted=8),)
    enough = plan_hugepages(4096, HugepageSize.SIZE_1G, pools(m), FLAGS, m.topology)
    assert enough is not None
    assert enough.targets == (PoolTarget(None, before=10, target=10, wanted=4),)
    assert "the global pool: 10 pages, enough free already" in enough.reasons


def test_reserved_but_unfaulted_pages_are_not_counted_as_free() -> None:
    pool = HugepagePool(2048, PagePool(total=100, free=100, reserved=60))
    m = fakecpu.intel_4c8t()
    plan = plan_hugepages(200, HugepageSize.SIZE_2M, [pool], FLAGS, m.topology)
    assert plan is not None
    assert plan.targets[0].target == 160  # 40 usable free, 100 wanted: 60 more


def test_the_pinned_cpus_node_is_raised_on_a_numa_host() -> None:
    m = fakecpu.numa_2node()
    plan = plan_hugepages(
        4096, HugepageSize.SIZE_2M, pools(m), FLAGS, m.topology, frozenset({8, 24})
    )
    assert plan is not None
    assert plan.targets == (PoolTarget(1, before=0, target=2048, wanted=2048),)
    assert plan.restore == {1: 0}
    assert plan.reasons[:2] == (
        "2048 pages of 2M for 4096 MiB (pinned vCPUs on NUMA node 1)",
        "NUMA node 1: 0 -> 2048 pages",
    )


def test_vcpus_on_two_nodes_split_the_pages_lower_node_first() -> None:
    m = fakecpu.numa_2node()
    plan = plan_hugepages(6, HugepageSize.SIZE_2M, pools(m), FLAGS, m.topology, frozenset({1, 9}))
    assert plan is not None
    assert [(t.node, t.wanted) for t in plan.targets] == [(0, 2), (1, 1)]


def test_without_pinning_a_numa_host_raises_the_global_pool() -> None:
    m = fakecpu.numa_2node()
    plan = plan_hugepages(1024, HugepageSize.SIZE_2M, pools(m), FLAGS, m.topology)
    assert plan is not None
    assert [t.node for t in plan.targets] == [None]
    assert "vCPUs not pinned" in plan.reasons[0]


def test_ram_that_is_not_a_whole_number_of_pages_is_refused_with_both_neighbours() -> None:
    m = fakecpu.intel_4c8t()
    with pytest.raises(HugepagesRefusedError) as caught:
        plan_hugepages(6000, HugepageSize.SIZE_1G, pools(m), FLAGS, m.topology)
    assert caught.value.message == (
        "memory.hugepages = 1G: the guest's RAM (6000 MiB) is not a whole number of 1G pages"
    )
    assert caught.value.fix == "set vm.memory to 5 GiB or 6 GiB"


def test_ram_smaller_than_one_page_is_refused() -> None:
    m = fakecpu.intel_4c8t()
    with pytest.raises(HugepagesRefusedError) as caught:
        plan_hugepages(512, HugepageSize.SIZE_1G, pools(m), FLAGS, m.topology)
    assert caught.value.fix == "set vm.memory to 1 GiB, or use smaller pages"


def test_1g_pages_need_pdpe1gb() -> None:
    m = fakecpu.intel_4c8t()
    with pytest.raises(HugepagesRefusedError) as caught:
        plan_hugepages(8192, HugepageSize.SIZE_1G, pools(m), FLAGS - {"pdpe1gb"}, m.topology)
    assert "no pdpe1gb in /proc/cpuinfo" in caught.value.message
    assert caught.value.fix == 'use hugepages = "2M"'


def test_a_size_the_kernel_does_not_offer_is_refused() -> None:
    m = fakecpu.intel_4c8t()
    only_2m = [p for p in pools(m) if p.size_kib == 2048]
    with pytest.raises(
        HugepagesRefusedError, match="no /sys/kernel/mm/hugepages/hugepages-1048576kB"
    ):
        plan_hugepages(8192, HugepageSize.SIZE_1G, only_2m, FLAGS, m.topology)


def after(total: int, nodes: dict[int, int] | None = None, size: int = 1048576) -> HugepagePool:
    return HugepagePool(
        size, PagePool(total, 0), {n: PagePool(t, 0) for n, t in (nodes or {}).items()}
    )


def test_the_check_after_raising_passes_when_the_pool_got_there() -> None:
    plan = HugepagePlan(HugepageSize.SIZE_1G, 8, (PoolTarget(None, 0, 8, 8),), ())
    assert check_raised(plan, after(8)) is None


def test_fewer_pages_than_asked_is_a_refusal_with_the_numbers_and_the_boot_fix() -> None:
    plan = HugepagePlan(HugepageSize.SIZE_1G, 8, (PoolTarget(None, 0, 8, 8),), ())
    refusal = check_raised(plan, after(5))
    assert refusal is not None
    assert refusal.message == (
        "memory.hugepages = 1G: the guest needs 8 pages of 1G (8 GiB); the global pool: asked "
        "for 8 (was 0), the kernel gave 5 (memory is too fragmented or too little is free); "
        "the pool was given back"
    )
    assert refusal.fix == (
        "reserve the pages at boot: add `hugepagesz=1G hugepages=8` to the kernel command line "
        "(with `default_hugepagesz=1G` if hugetlbfs should use them by default), or lower vm.memory"
    )


def test_a_short_node_pool_gives_the_per_node_boot_syntax() -> None:
    plan = HugepagePlan(HugepageSize.SIZE_2M, 2048, (PoolTarget(1, 0, 2048, 2048),), ())
    refusal = check_raised(plan, after(100, {0: 0, 1: 100}, size=2048))
    assert refusal is not None
    assert "NUMA node 1: asked for 2048 (was 0), the kernel gave 100" in refusal.message
    assert "`hugepagesz=2M hugepages=1:2048`" in (refusal.fix or "")
