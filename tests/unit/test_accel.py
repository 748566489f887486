"""The accelerator: KVM only where /dev/kvm opens read-write and the host is not PVM."""

from __future__ import annotations

from pathlib import Path

import pytest

from handoff.base.errors import HostError
from handoff.base.host import HostPaths
from handoff.profile import Accel
from handoff.qemu.accel import (
    KvmProblem,
    KvmProblemKind,
    choose_accel,
    diagnose_kvm,
    kvm_problem,
)
from tests.unprivileged import open_directory, run_as_nobody


def host(tmp_path: Path, *, kvm: bool = True, pvm: bool = False, mode: int = 0o660) -> HostPaths:
    """A fake host: /dev/kvm as a file (opening it is all choose_accel does)."""
    paths = HostPaths(sys=tmp_path / "sys", proc=tmp_path / "proc", dev=tmp_path / "dev")
    (paths.sys / "module" / "kvm").mkdir(parents=True)
    paths.dev.mkdir()
    if kvm:
        (paths.dev / "kvm").touch(mode=mode)
        (paths.dev / "kvm").chmod(mode)
    if pvm:
        (paths.sys / "module" / "kvm_pvm").mkdir()
    return paths


def test_auto_picks_kvm_when_dev_kvm_opens(tmp_path: Path) -> None:
    choice = choose_accel(Accel.AUTO, host(tmp_path))
    assert choice.accel == "kvm"
    assert "opens read-write" in choice.reason


def test_auto_falls_back_to_tcg_without_dev_kvm_and_says_why(tmp_path: Path) -> None:
    choice = choose_accel(Accel.AUTO, host(tmp_path, kvm=False))
    assert choice.accel == "tcg"
    assert "does not exist" in choice.reason


def test_a_pvm_host_gets_tcg_even_though_dev_kvm_opens(tmp_path: Path) -> None:
    choice = choose_accel(Accel.AUTO, host(tmp_path, pvm=True))
    assert choice.accel == "tcg"
    assert "PVM" in choice.reason
    assert "kvm_pvm" in choice.reason


def test_tcg_is_always_allowed(tmp_path: Path) -> None:
    choice = choose_accel(Accel.TCG, host(tmp_path, kvm=False, pvm=True))
    assert choice.accel == "tcg"
    assert "asks for TCG" in choice.reason


def test_kvm_requested_on_a_pvm_host_is_refused_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(HostError) as caught:
        choose_accel(Accel.KVM, host(tmp_path, pvm=True))
    assert 'vm.accel = "kvm"' in caught.value.message
    assert caught.value.fix is not None
    assert 'vm.accel = "auto"' in caught.value.fix


def test_kvm_requested_without_dev_kvm_says_how_to_enable_it(tmp_path: Path) -> None:
    with pytest.raises(HostError) as caught:
        choose_accel(Accel.KVM, host(tmp_path, kvm=False))
    assert caught.value.fix is not None
    assert "modprobe kvm_intel" in caught.value.fix


def test_showing_the_command_keeps_a_kvm_request_and_says_run_would_refuse(
    tmp_path: Path,
) -> None:
    pvm_host = host(tmp_path, pvm=True)
    choice = choose_accel(Accel.KVM, pvm_host, strict=False)
    assert choice.accel == "kvm"
    assert "would refuse" in choice.reason
    assert choose_accel(Accel.AUTO, pvm_host, strict=False).accel == "tcg"


def test_kvm_requested_where_it_works_is_granted(tmp_path: Path) -> None:
    assert choose_accel(Accel.KVM, host(tmp_path)).accel == "kvm"


def test_a_dev_kvm_without_write_permission_is_not_kvm() -> None:
    with open_directory() as root:  # checked as an ordinary user: root opens any file
        paths = host(root, mode=0o444)

        def check() -> None:
            problem = kvm_problem(paths)
            assert problem is not None
            assert "permission denied" in problem

        run_as_nobody(check)


def test_the_real_host_answer_is_consistent_with_its_dev_kvm() -> None:
    real = HostPaths()
    choice = choose_accel(Accel.AUTO, real)
    if Path("/sys/module/kvm_pvm").exists() or not Path("/dev/kvm").exists():
        assert choice.accel == "tcg"
    assert choice.reason


def test_the_fix_follows_the_kind_of_problem_not_words_in_its_text(tmp_path: Path) -> None:
    # A missing /dev/kvm under a directory whose name holds other problems' words:
    # the advice is still the one for a missing /dev/kvm.
    odd = tmp_path / "PVM host, permission denied"
    odd.mkdir()
    paths = host(odd, kvm=False)
    problem = diagnose_kvm(paths)
    assert problem is not None
    assert problem.kind is KvmProblemKind.MISSING
    with pytest.raises(HostError) as caught:
        choose_accel(Accel.KVM, paths)
    assert caught.value.fix is not None
    assert caught.value.fix.startswith("enable VT-x/AMD-V in the firmware setup")


def test_a_dev_kvm_that_cannot_be_opened_for_another_reason_points_to_doctor(
    tmp_path: Path,
) -> None:
    paths = host(tmp_path, kvm=False)
    (paths.dev / "kvm").mkdir()  # EISDIR: neither missing nor a permission problem
    problem = diagnose_kvm(paths)
    assert problem is not None
    assert problem.kind is KvmProblemKind.OTHER
    with pytest.raises(HostError) as caught:
        choose_accel(Accel.KVM, paths)
    assert caught.value.fix is not None
    assert "handoff doctor" in caught.value.fix
    assert kvm_problem(paths) == problem.text


def test_every_kind_of_problem_has_its_own_fix() -> None:
    fixes = {KvmProblem(kind, "x").fix for kind in KvmProblemKind}
    assert len(fixes) == len(KvmProblemKind)
