"""RLIMIT_MEMLOCK must cover guest RAM + 1 GiB for a passthrough QEMU."""

from pathlib import Path

import pytest

from handoff.base.errors import HostError
from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress
from handoff.profile import Passthrough, Profile, Vm
from handoff.session.memlock import UNLIMITED, check_memlock, judge_memlock, required_memlock

GIB = 1 << 30
PASS = Profile(
    vm=Vm(name="gaming", memory_mib=8192),
    source=Path("gaming.toml"),
    passthrough=(Passthrough(address=PciAddress.parse("01:00.0")),),
)


def test_passthrough_needs_guest_ram_plus_one_gib() -> None:
    assert required_memlock(PASS) == 9 * GIB


def test_without_passthrough_nothing_is_locked() -> None:
    assert required_memlock(Profile(vm=Vm(name="d", memory_mib=512), source=Path("d"))) is None


def test_a_sufficient_soft_limit_needs_no_raise() -> None:
    verdict = judge_memlock(9 * GIB, UNLIMITED, UNLIMITED, can_raise_hard=False, user="u")
    assert verdict.raise_to is None


def test_a_low_soft_limit_under_a_high_hard_limit_is_raised_for_the_child() -> None:
    verdict = judge_memlock(9 * GIB, 8 << 20, 16 * GIB, can_raise_hard=False, user="u")
    assert verdict.raise_to == 9 * GIB


def test_root_with_cap_sys_resource_raises_even_the_hard_limit() -> None:
    verdict = judge_memlock(9 * GIB, 8 << 20, 8 << 20, can_raise_hard=True, user="root")
    assert verdict.raise_to == 9 * GIB


def test_a_low_hard_limit_is_refused_with_the_limits_d_line() -> None:
    with pytest.raises(HostError) as caught:
        check_memlock(PASS, HostPaths(), getrlimit=lambda _: (8 << 20, 8 << 20),
                      can_raise_hard=lambda: False)
    assert "9216 MiB" in caught.value.message
    assert "8 MiB" in caught.value.message
    assert caught.value.fix is not None
    assert "hard memlock 9437184" in caught.value.fix
    assert "/etc/security/limits.d/handoff-memlock.conf" in caught.value.fix


def test_check_returns_the_value_the_spawner_sets() -> None:
    assert check_memlock(PASS, HostPaths(), getrlimit=lambda _: (UNLIMITED, UNLIMITED)) == 9 * GIB


def status_with(tmp_path: Path, cap_eff: int) -> HostPaths:
    """A /proc whose self/status has the CapEff mask ``cap_eff``."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "status").write_text(f"Name:\thandoff\nCapEff:\t{cap_eff:016x}\n")
    return HostPaths(proc=proc)


@pytest.mark.parametrize(("cap_eff", "raised"), [(1 << 24, True), (0, False)])
def test_whether_the_hard_limit_may_be_raised_is_read_from_the_host_paths_proc(
    tmp_path: Path, cap_eff: int, raised: bool
) -> None:
    paths = status_with(tmp_path, cap_eff)  # CAP_SYS_RESOURCE is bit 24
    low = lambda _: (8 << 20, 8 << 20)  # noqa: E731
    if raised:
        assert check_memlock(PASS, paths, getrlimit=low) == 9 * GIB
    else:
        with pytest.raises(HostError):
            check_memlock(PASS, paths, getrlimit=low)
