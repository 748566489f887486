"""The cpufreq governor of the pinned CPUs: the change, the way back, and what is refused."""

import pytest

from handoff.base.errors import GovernorRefusedError
from handoff.tune.governor import plan_governor
from handoff.tune.model import CpuFreq

AMD = ("conservative", "ondemand", "userspace", "powersave", "performance", "schedutil")


def freq(
    *cpus: int, governor: str = "schedutil", available: tuple[str, ...] = AMD
) -> dict[int, CpuFreq]:
    return {cpu: CpuFreq(governor, available) for cpu in cpus}


def test_each_pinned_cpu_gets_the_governor_and_its_old_one_back() -> None:
    plan = plan_governor("performance", [4, 12, 5, 13], freq(*range(16)))
    assert plan.targets == {
        4: "performance",
        5: "performance",
        12: "performance",
        13: "performance",
    }
    assert plan.restore == {4: "schedutil", 5: "schedutil", 12: "schedutil", 13: "schedutil"}
    assert plan.reasons == ("governor 'performance' on CPUs 4-5,12-13 for the session",)


def test_an_empty_governor_leaves_everything_alone() -> None:
    plan = plan_governor("", [1, 2], freq(1, 2))
    assert (plan.targets, plan.restore, plan.reasons) == ({}, {}, ())


def test_one_pinned_cpu_without_cpufreq_among_others_is_named_alone() -> None:
    plan = plan_governor("performance", [1, 2], freq(1))
    assert plan.targets == {1: "performance"}
    assert plan.reasons[0].startswith("cpufreq absent on CPU 2 (")


def test_a_cpu_already_on_the_governor_is_neither_written_nor_restored() -> None:
    cpus = {**freq(1), **freq(2, governor="performance")}
    plan = plan_governor("performance", [1, 2], cpus)
    assert plan.targets == {1: "performance"}
    assert plan.restore == {1: "schedutil"}
    assert "CPU 2 already on 'performance'" in plan.reasons


def test_absent_cpufreq_is_one_info_line_not_an_error() -> None:
    """VMs and the testbed have no cpufreq: there is nothing to set or undo."""
    plan = plan_governor("performance", [0, 1], {})
    assert plan.targets == {}
    assert plan.restore == {}
    assert plan.reasons == (
        "cpufreq absent on CPUs 0-1 (no cpufreq/scaling_governor): "
        "governor 'performance' not set there",
    )


def test_a_governor_the_cpu_does_not_offer_is_refused_with_the_list() -> None:
    with pytest.raises(GovernorRefusedError) as caught:
        plan_governor(
            "ondemand", [2], freq(2, governor="powersave", available=("performance", "powersave"))
        )
    assert caught.value.message == (
        "cpu.governor = 'ondemand': CPU 2 offers only performance, powersave "
        "(cpufreq/scaling_available_governors)"
    )
    assert (
        caught.value.fix
        == 'set cpu.governor to one of: performance, powersave, or "" to leave it alone'
    )
