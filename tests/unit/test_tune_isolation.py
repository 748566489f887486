"""Isolation: the AllowedCPUs of the host's units while the VM runs, and the refusals."""

import pytest

from handoff.base.errors import IsolationRefusedError
from handoff.tune.cpulist import parse_cpulist
from handoff.tune.isolation import plan_isolation
from handoff.tune.model import EMULATOR_AUTO, PIN_AUTO, GuestTopology
from handoff.tune.pinning import plan_pinning
from tests.unit import fakecpu


def test_host_units_get_every_cpu_but_the_vcpus_and_keep_the_emulators() -> None:
    """The 2-CCX Ryzen with an 8-vCPU guest: host and emulator share the first CCX."""
    m = fakecpu.ryzen_8c16t_2ccx()
    pin = plan_pinning(m.topology, GuestTopology(cores=4, threads=2), PIN_AUTO, EMULATOR_AUTO)
    plan = plan_isolation(m.topology.online, pin.vcpu_cpus, pin.emulator)
    assert plan.units == (
        ("system.slice", "0-3,8-11"),
        ("user.slice", "0-3,8-11"),
        ("init.scope", "0-3,8-11"),
    )
    assert plan.qemu_scope == "0-15"
    assert plan.host_cpus == pin.emulator
    assert "the emulator's CPUs 0-3,8-11 stay with the host" in plan.reasons[1]


def test_an_explicit_emulator_inside_the_host_share_is_not_taken_from_the_host() -> None:
    online = parse_cpulist("0-7")
    plan = plan_isolation(online, frozenset({1, 5, 2, 6}), frozenset({3}))
    assert dict(plan.units)["user.slice"] == "0,3-4,7"
    assert plan.qemu_scope == "1-3,5-6"


def test_isolation_is_refused_when_the_vcpus_take_every_cpu() -> None:
    with pytest.raises(IsolationRefusedError) as caught:
        plan_isolation(parse_cpulist("0-3"), parse_cpulist("0-3"), frozenset())
    assert caught.value.message == (
        "cpu.isolate = true would leave host tasks no CPU: the vCPUs use every online CPU (0-3)"
    )
    assert caught.value.fix


def test_isolation_without_pinning_is_refused() -> None:
    with pytest.raises(IsolationRefusedError, match="needs pinned vCPUs"):
        plan_isolation(parse_cpulist("0-3"), frozenset(), frozenset())
