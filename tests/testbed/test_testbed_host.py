"""The testbed's host side: its decisions, its guest scripts, and the report relay.

These run on the host and boot nothing: the boot itself is proven by the
realkernel smoke suite (test_smoke.py), which runs in the one boot of the run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.testbed import devices, plugin, runner

KERNEL = runner.Kernel(
    package="linux-image-6.1.0-56-amd64",
    version="6.1.158-1",
    release="6.1.0-56-amd64",
    root=Path("/cache/kernel/linux-image-6.1.0-56-amd64"),
)


def test_a_pvm_host_gets_tcg_even_when_dev_kvm_opens() -> None:
    accel = runner.choose_accel("auto", pvm_host=True, kvm_opens=True)
    assert accel.name == "tcg"
    assert "kvm_pvm" in accel.reason


def test_kvm_is_used_only_when_dev_kvm_opens_and_then_with_a_split_irqchip() -> None:
    assert runner.choose_accel("auto", pvm_host=False, kvm_opens=False).name == "tcg"
    kvm = runner.choose_accel("auto", pvm_host=False, kvm_opens=True)
    assert kvm.name == "kvm"
    assert "kernel-irqchip=split" in kvm.machine  # intremap needs it under KVM


def test_an_explicit_accelerator_wins_and_a_misspelt_one_is_refused() -> None:
    assert runner.choose_accel("kvm", pvm_host=True, kvm_opens=False).name == "kvm"
    assert runner.choose_accel("tcg", pvm_host=False, kvm_opens=True).name == "tcg"
    with pytest.raises(runner.TestbedError, match="TESTBED_ACCEL"):
        runner.choose_accel("kvmm", pvm_host=False, kvm_opens=True)


def test_the_guest_has_an_intel_iommu_with_interrupt_remapping_and_the_device_set() -> None:
    argv = runner.qemu_command(
        accel=runner.choose_accel("tcg", pvm_host=False, kvm_opens=False),
        kernel=KERNEL,
        initrd=Path("/cache/initrd.gz"),
        run_dir=Path("/cache/runs/x"),
        rw_dir=Path("/work/main"),
        smp=2,
        memory="2048M",
    )
    assert argv[argv.index("-machine") + 1] == "q35,accel=tcg"
    assert "intel-iommu,intremap=on,caching-mode=on" in argv
    assert "intel_iommu=on" in argv[argv.index("-append") + 1].split()
    assert argv[-len(devices.qemu_args()) :] == devices.qemu_args()
    fsdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-fsdev"]
    assert "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap" in fsdevs
    assert any(f.startswith("local,id=rwdir,path=/work/main,") for f in fsdevs)
    assert not any("readonly" in f for f in fsdevs if "id=rwdir" in f)


def test_nothing_in_the_testbed_listens_on_a_network_port() -> None:
    argv = runner.qemu_command(
        accel=runner.choose_accel("tcg", pvm_host=False, kvm_opens=False),
        kernel=KERNEL,
        initrd=Path("/i"),
        run_dir=Path("/r"),
        rw_dir=None,
        smp=1,
        memory="1G",
    )
    netdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]
    assert netdevs == ["user,id=n0,restrict=on"]
    assert not any(word in " ".join(argv) for word in ("hostfwd", "tcp:", "-vnc", "-spice"))
    assert "rwdir" not in " ".join(argv)


def test_the_guest_path_starts_with_the_real_interpreter_and_drops_pyenv_shims(
    tmp_path: Path,
) -> None:
    script = runner.guest_env_script(
        {"ODD": "it's $HOME; `x`"},
        ["/work/main/.venv/bin"],
        "/root/.pyenv/bin:/root/.pyenv/shims:/usr/bin:/bin",
    )
    (tmp_path / "env.sh").write_text(script)
    shown = subprocess.run(
        ["sh", "-c", '. ./env.sh; printf "%s\\n%s\\n" "$PATH" "$ODD"'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    path = shown[0].split(":")
    assert path[0] == "/work/main/.venv/bin"
    assert "/root/.pyenv/shims" not in path
    assert "/usr/sbin" in path
    assert shown[1] == "it's $HOME; `x`"


def test_the_guest_command_keeps_every_argument_intact(tmp_path: Path) -> None:
    script = runner.command_script(tmp_path, ["printf", "[%s]", "a b", "it's", "$X", ""])
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout == "[a b][it's][$X][]"


def test_without_qemu_a_developer_gets_a_visible_skip_but_ci_never_does() -> None:
    skip = plugin.unavailable(qemu=None, root=True, ci=False)
    assert skip is not None
    assert skip[1] is True
    assert "contrib/install.sh --dev" in skip[0]
    assert plugin.unavailable(qemu=None, root=True, ci=True) is None  # the runner installs it
    assert plugin.unavailable(qemu="/usr/bin/qemu-system-x86_64", root=True, ci=False) is None


def test_without_root_the_realkernel_tests_fail_with_advice_rather_than_skip() -> None:
    reason = plugin.unavailable(qemu="/usr/bin/qemu-system-x86_64", root=False, ci=False)
    assert reason is not None
    assert reason[1] is False
    assert "-m 'not realkernel'" in reason[0]


GUEST_TESTS = """
import pytest

pytestmark = pytest.mark.realkernel

def test_passes():
    pass

def test_fails():
    print("said in the guest")
    value = 41
    assert value == 42

@pytest.mark.skipif(True, reason="no IOMMU here")
def test_skipped():
    pass
"""


def test_a_guest_failure_comes_back_with_its_traceback_and_output_and_a_skip_with_its_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, pytestconfig: pytest.Config
) -> None:
    pytester.makeini("[pytest]\nmarkers =\n    realkernel: in the testbed\n")
    pytester.makepyfile(test_guest=GUEST_TESTS)
    monkeypatch.setenv("TESTBED", "1")
    monkeypatch.setenv("PYTHONPATH", str(runner.CHECKOUT))
    reports = pytester.path / "reports.jsonl"
    result = pytester.runpytest_subprocess(
        "-p", "tests.testbed.plugin", f"--testbed-report={reports}", "-m", "realkernel"
    )  # fmt: skip
    result.assert_outcomes(passed=1, failed=1, skipped=1)

    reader = plugin.ReportReader(pytestconfig)
    data = reports.read_bytes()
    reader.feed(data[:100])  # a line cut in two arrives in two pieces
    reader.feed(data[100:])
    outcomes = reader.outcomes
    assert reader.exitstatus == 1
    assert all(o.complete for o in outcomes.values())
    assert outcomes["test_guest.py::test_passes"].reports["call"].passed
    failed = outcomes["test_guest.py::test_fails"].reports["call"]
    assert failed.failed
    assert "assert 41 == 42" in failed.longreprtext
    assert "said in the guest" in failed.capstdout
    skipped = outcomes["test_guest.py::test_skipped"].reports["setup"]
    assert skipped.skipped
    assert isinstance(skipped.longrepr, tuple)
    assert skipped.longrepr[2] == "Skipped: no IOMMU here"


def test_on_the_host_realkernel_tests_are_stand_ins_whose_skip_marks_are_left_to_the_guest(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nmarkers =\n    realkernel: in the testbed\n")
    pytester.makepyfile(test_guest=GUEST_TESTS, test_host="def test_on_the_host():\n    pass\n")
    monkeypatch.delenv("TESTBED", raising=False)
    recorder = pytester.inline_run("--collect-only", "-p", "tests.testbed.plugin")
    items = recorder.getcall("pytest_collection_finish").session.items
    by_name = {item.name: item for item in items}
    assert isinstance(by_name["test_skipped"], plugin.GuestItem)
    assert by_name["test_skipped"].nodeid == "test_guest.py::test_skipped"
    assert by_name["test_skipped"].get_closest_marker("skipif") is None
    assert by_name["test_skipped"].get_closest_marker("realkernel") is not None
    assert not isinstance(by_name["test_on_the_host"], plugin.GuestItem)


def test_deselecting_realkernel_boots_nothing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nmarkers =\n    realkernel: in the testbed\n")
    pytester.makepyfile(test_guest=GUEST_TESTS, test_host="def test_on_the_host():\n    pass\n")
    monkeypatch.delenv("TESTBED", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(runner.CHECKOUT))
    result = pytester.runpytest_subprocess("-p", "tests.testbed.plugin", "-m", "not realkernel")
    result.assert_outcomes(passed=1, deselected=3)
    assert "testbed:" not in result.stdout.str()


def test_without_qemu_on_a_developers_machine_realkernel_tests_skip_with_the_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nmarkers =\n    realkernel: in the testbed\n")
    pytester.makepyfile(test_guest=GUEST_TESTS)
    monkeypatch.delenv("TESTBED", raising=False)
    monkeypatch.delenv("CI", raising=False)
    empty = pytester.mkdir("empty-path")
    monkeypatch.setenv("PATH", str(empty))  # no qemu-system-x86_64 to be found
    result = pytester.runpytest_inprocess("-p", "tests.testbed.plugin", "-rs")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(["*SKIPPED*test_guest.py:*qemu-system-x86_64 is not installed*"])


def test_a_module_that_does_not_import_in_the_guest_is_named_in_its_tests_failures(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, pytestconfig: pytest.Config
) -> None:
    pytester.makeini("[pytest]\nmarkers =\n    realkernel: in the testbed\n")
    pytester.makepyfile(test_broken="import no_such_module_in_the_guest\n")
    monkeypatch.setenv("TESTBED", "1")
    monkeypatch.setenv("PYTHONPATH", str(runner.CHECKOUT))
    reports = pytester.path / "reports.jsonl"
    pytester.runpytest_subprocess("-p", "tests.testbed.plugin", f"--testbed-report={reports}")

    run = plugin.GuestRun(pytestconfig, ["test_broken.py::test_anything"])
    run.reader.feed(reports.read_bytes())
    text = run.why_missing("test_broken.py::test_anything")
    assert "the testbed guest did not report test_broken.py::test_anything" in text
    assert "collection errors in the guest" in text
    assert "no_such_module_in_the_guest" in text
    assert "guest pytest exit status: 2" in text
