"""The testbed's host side: its decisions, its guest scripts, and the report relay.

These run on the host and boot nothing: the boot itself is proven by the
realkernel smoke suite (test_smoke.py), which runs in the one boot of the run.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from handoff.base.host import HostPaths
from tests.testbed import conftest as fixtures
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


# ---------------------------------------------------------------- the guest's interpreter


def test_an_interpreter_the_guest_cannot_see_is_refused_in_one_line_naming_the_venv() -> None:
    checkout = Path("/work/main")
    problem = plugin.interpreter_problem("/tmp/venv/bin/python", [], checkout)
    assert problem is not None
    assert "\n" not in problem
    assert "cannot run /tmp/venv/bin/python" in problem
    assert "the host's root read-only" in problem
    assert "the checkout /work/main" in problem
    assert "`bash tests/run.sh` or `.venv/bin/python -m pytest`" in problem
    # pytest imported from a directory the guest mounts afresh: named too.
    hidden = plugin.interpreter_problem(
        "/usr/bin/python3", ["/run/user/0/site-packages/pytest"], checkout
    )
    assert hidden is not None
    assert "/run/user/0/site-packages/pytest is not visible" in hidden


def test_the_checkouts_venv_and_interpreters_on_the_hosts_root_are_visible_in_the_guest() -> None:
    checkout = Path("/work/main")
    venv = ["/root/.pyenv/versions/3.11.7/bin/python3.11", "/work/main/.venv/lib/pytest"]
    assert plugin.interpreter_problem("/work/main/.venv/bin/python", venv, checkout) is None
    assert plugin.interpreter_problem("/usr/bin/python3", ["/usr/lib/pytest"], checkout) is None
    # A checkout under /tmp is mounted at its own path: its venv is visible.
    assert plugin.interpreter_problem("/tmp/ci/h/.venv/bin/python", [], Path("/tmp/ci/h")) is None


def test_pytest_from_an_interpreter_the_guest_cannot_see_fails_fast_in_one_line_and_boots_nothing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nmarkers =\n    realkernel: in the testbed\n")
    pytester.makepyfile(test_guest=GUEST_TESTS)
    monkeypatch.delenv("TESTBED", raising=False)
    monkeypatch.delenv("CI", raising=False)
    # No QEMU on PATH either: without the interpreter check these would be skips.
    monkeypatch.setenv("PATH", str(pytester.mkdir("empty-path")))
    monkeypatch.setattr(sys, "executable", "/tmp/elsewhere/bin/python")
    recorder = pytester.inline_run("-p", "tests.testbed.plugin")
    recorder.assertoutcome(failed=3)
    for report in recorder.getfailures():
        assert report.longreprtext == plugin.interpreter_problem(
            "/tmp/elsewhere/bin/python", [], runner.CHECKOUT
        )


# ---------------------------------------------------------------- missing capabilities fail


def fake_sys(root: Path, *, iommu: bool, bochs: bool) -> HostPaths:
    """A /sys with one PCI function and, optionally, an IOMMU group holding it."""
    function = root / "sys" / "bus" / "pci" / "devices" / "0000:00:06.0"
    function.mkdir(parents=True)
    (function / "vendor").write_text("0x1234\n" if bochs else "0x8086\n")
    (function / "device").write_text("0x1111\n" if bochs else "0x10d3\n")
    groups = root / "sys" / "kernel" / "iommu_groups"
    groups.mkdir(parents=True)
    if iommu:
        (groups / "3" / "devices").mkdir(parents=True)
        (groups / "3" / "devices" / "0000:00:06.0").touch()
    (root / "dev").mkdir()
    return HostPaths(sys=root / "sys", dev=root / "dev")


def test_a_guest_without_iommu_or_lookalike_fails_the_gpu_tests_naming_both(
    tmp_path: Path,
) -> None:
    gaps = fixtures.gpu_gaps(fake_sys(tmp_path, iommu=False, bochs=False))
    assert len(gaps) == 2
    assert "an IOMMU" in gaps[0]
    assert "intel_iommu=on" in gaps[0]
    assert "GPU lookalike" in gaps[1]
    with pytest.raises(pytest.fail.Exception, match="never a skip") as failed:
        fixtures.fail_on_gaps("the GPU tests", gaps)
    assert "lacks what the GPU tests need: an IOMMU" in str(failed.value)


def test_a_guest_with_iommu_and_lookalike_has_no_gpu_gap(tmp_path: Path) -> None:
    assert fixtures.gpu_gaps(fake_sys(tmp_path, iommu=True, bochs=True)) == []
    fixtures.fail_on_gaps("the GPU tests", [])  # nothing missing: no failure


def test_a_guest_without_dev_uinput_fails_the_input_tests(tmp_path: Path) -> None:
    paths = fake_sys(tmp_path, iommu=True, bochs=True)
    (gap,) = fixtures.uinput_gaps(paths)
    assert f"{paths.dev}/uinput" in gap
    assert "modprobe" in gap
    (paths.dev / "uinput").touch()
    assert fixtures.uinput_gaps(paths) == []


REALKERNEL_MODULES = sorted(
    p.stem for p in Path(__file__).parent.glob("test_*.py") if p.stem != "test_testbed_host"
)


@pytest.mark.parametrize("name", REALKERNEL_MODULES)
def test_no_realkernel_module_skips_when_the_guest_lacks_something(name: str) -> None:
    marks = getattr(importlib.import_module(f"tests.testbed.{name}"), "pytestmark", [])
    marks = marks if isinstance(marks, list) else [marks]
    assert [m.name for m in marks if m.name in ("skip", "skipif")] == [], (
        f"{name}: ask for a capability fixture (testbed_gpu, testbed_uinput) instead: "
        "in the guest a missing capability fails"
    )


@pytest.mark.parametrize(
    ("name", "fixture"),
    [
        ("test_gpu_realkernel", "testbed_gpu"),
        ("test_gpu_session_realkernel", "testbed_gpu"),
        ("test_input_realkernel", "testbed_uinput"),
        ("test_input_virtio_guest", "testbed_uinput"),
    ],
)
def test_the_gpu_and_input_modules_ask_for_their_capabilities(name: str, fixture: str) -> None:
    marks = importlib.import_module(f"tests.testbed.{name}").pytestmark
    assert any(m.name == "usefixtures" and fixture in m.args for m in marks)


# ---------------------------------------------------------------- the systemd boot


def systemd_argv(accel: runner.Accel, smp: int = 4) -> list[str]:
    return runner.qemu_command(
        accel=accel,
        kernel=KERNEL,
        initrd=Path("/i"),
        run_dir=Path("/r"),
        rw_dir=None,
        smp=smp,
        memory="2048M",
        init=runner.Init.SYSTEMD,
    )


def test_the_boot_mode_comes_from_testbed_init_and_a_misspelt_one_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TESTBED_INIT", raising=False)
    assert runner.Options().init is runner.Init.CLASSIC
    monkeypatch.setenv("TESTBED_INIT", "systemd")
    assert runner.Options().init is runner.Init.SYSTEMD
    monkeypatch.setenv("TESTBED_INIT", "sysv")
    with pytest.raises(runner.TestbedError, match="TESTBED_INIT='sysv': use classic or systemd"):
        runner.Options()


def test_the_systemd_boot_has_two_cores_of_two_threads_on_an_intel_max_cpu() -> None:
    tcg = runner.choose_accel("tcg", pvm_host=False, kvm_opens=False)
    accel = runner.accel_for(tcg, runner.Init.SYSTEMD, cpu_pinned=False)
    argv = systemd_argv(accel, smp=runner.default_smp(runner.Init.SYSTEMD))
    assert argv[argv.index("-smp") + 1] == "4,sockets=1,cores=2,threads=2"
    assert argv[argv.index("-cpu") + 1] == "max,vendor=GenuineIntel"
    cmdline = argv[argv.index("-append") + 1].split()
    assert "systemd.unit=testbed.target" in cmdline
    assert "intel_iommu=on" in cmdline
    # TESTBED_CPU, KVM and the classic boot keep their CPU; the classic boot its flat -smp.
    assert runner.accel_for(tcg, runner.Init.SYSTEMD, cpu_pinned=True) == tcg
    kvm = runner.choose_accel("kvm", pvm_host=False, kvm_opens=True)
    assert runner.accel_for(kvm, runner.Init.SYSTEMD, cpu_pinned=False) == kvm
    assert runner.accel_for(tcg, runner.Init.CLASSIC, cpu_pinned=False) == tcg
    assert runner.smp_topology(3, runner.Init.SYSTEMD) == "3"
    assert runner.smp_topology(4, runner.Init.CLASSIC) == "4"
    assert "systemd" not in runner.kernel_cmdline(runner.Init.CLASSIC)


def test_the_systemd_overlay_runs_the_command_in_a_unit_that_powers_off_either_way() -> None:
    files = runner.systemd_overlay()
    target = files["etc/systemd/system/testbed.target"]
    assert "Wants=testbed.service" in target.splitlines()
    service = files["etc/systemd/system/testbed.service"].splitlines()
    assert "ExecStart=/bin/sh /tb/testbed-service.sh" in service
    # exec, not oneshot: a oneshot's start job would keep is-system-running "starting".
    assert "Type=exec" in service
    assert "SuccessAction=poweroff-force" in service
    assert "FailureAction=poweroff-force" in service
    assert "TTYPath=/dev/ttyS0" in service
    for mode in ("emergency", "rescue"):  # a broken boot ends now, not at the timeout
        unit = files[f"etc/systemd/system/{mode}.service"].splitlines()
        assert "SuccessAction=poweroff-force" in unit
        assert "FailureAction=poweroff-force" in unit
        assert "ExecStart=-/bin/systemctl --no-pager --failed" in unit
    journald = files["etc/systemd/journald.conf.d/testbed.conf"].splitlines()
    assert {"Storage=volatile", "ForwardToConsole=yes", "TTYPath=/dev/ttyS0"} <= set(journald)
    assert [line for line in files["etc/fstab"].splitlines() if not line.startswith("#")] == []


def test_the_systemd_boot_masks_login_network_and_clock_and_defaults_to_its_target() -> None:
    links = runner.systemd_links()
    for unit in ("getty.target", "serial-getty@.service", "systemd-networkd.service",
                 "systemd-timesyncd.service", "timers.target"):  # fmt: skip
        assert links[f"etc/systemd/system/{unit}"] == "/dev/null"
    assert links["etc/systemd/system/default.target"] == "testbed.target"


def test_a_systemd_run_share_holds_the_overlay_and_the_service_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TESTBED_INIT", raising=False)
    options = runner.Options(init=runner.Init.SYSTEMD, cwd=tmp_path)
    runner.write_run_files(tmp_path, KERNEL, ["true"], options)
    assert "INIT=systemd" in (tmp_path / "guest.conf").read_text().splitlines()
    assert "export TESTBED_INIT=systemd" in (tmp_path / "env.sh").read_text().splitlines()
    assert (tmp_path / "testbed-service.sh").read_bytes() == (
        runner.GUEST_DIR / "testbed-service.sh"
    ).read_bytes()
    overlay = tmp_path / runner.OVERLAY / "etc" / "systemd" / "system"
    assert (overlay / "testbed.service").is_file()
    assert os.readlink(overlay / "systemd-timesyncd.service") == "/dev/null"
    assert os.readlink(overlay / "default.target") == "testbed.target"
    runner.write_run_files(tmp_path, KERNEL, ["true"], options)  # idempotent over its links

    classic = tmp_path / "classic"
    classic.mkdir()
    runner.write_run_files(classic, KERNEL, ["true"], runner.Options(cwd=tmp_path))
    assert "INIT=classic" in (classic / "guest.conf").read_text().splitlines()
    assert not (classic / runner.OVERLAY).exists()


def test_the_systemd_boot_needs_the_systemd_package_and_the_classic_one_does_not() -> None:
    assert "systemd" in runner.host_packages(runner.Init.SYSTEMD)
    assert "systemd" not in runner.host_packages(runner.Init.CLASSIC)
    assert "systemd" in (runner.CHECKOUT / "contrib" / "install.sh").read_text()


@pytest.mark.parametrize("script", ["init.sh", "stage2.sh", "testbed-service.sh"])
def test_the_guest_scripts_parse(script: str) -> None:
    subprocess.run(["sh", "-n", str(runner.GUEST_DIR / script)], check=True)


SYSTEMD_GUEST_TESTS = """
import pytest

pytestmark = pytest.mark.realkernel

def test_classic():
    pass

@pytest.mark.realkernel(init="systemd")
def test_in_systemd():
    pass
"""


def batch_of(pytester: pytest.Pytester, *args: str) -> plugin.HostBatch:
    pytester.makeini("[pytest]\nmarkers =\n    realkernel: in the testbed\n")
    pytester.makepyfile(test_guest=SYSTEMD_GUEST_TESTS)
    recorder = pytester.inline_run("--collect-only", "-p", "tests.testbed.plugin", *args)
    config = recorder.getcall("pytest_collection_finish").session.config
    batch = config.pluginmanager.getplugin("testbed-batch")
    assert isinstance(batch, plugin.HostBatch)
    return batch


def test_systemd_marked_tests_go_to_their_own_boot_which_waits_for_the_other(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TESTBED", raising=False)
    runs = batch_of(pytester).runs
    assert set(runs) == {runner.Init.CLASSIC, runner.Init.SYSTEMD}
    assert runs[runner.Init.CLASSIC].nodeids == ["test_guest.py::test_classic"]
    assert runs[runner.Init.SYSTEMD].nodeids == ["test_guest.py::test_in_systemd"]
    assert runs[runner.Init.SYSTEMD].options.init is runner.Init.SYSTEMD
    assert runs[runner.Init.CLASSIC].options.init is runner.Init.CLASSIC
    assert runs[runner.Init.SYSTEMD].peers == [runs[runner.Init.CLASSIC]]
    assert runs[runner.Init.CLASSIC].peers == [runs[runner.Init.SYSTEMD]]


def test_no_systemd_test_selected_no_systemd_boot(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TESTBED", raising=False)
    assert set(batch_of(pytester, "-k", "classic").runs) == {runner.Init.CLASSIC}


def test_a_misspelt_boot_mode_on_a_mark_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TESTBED", raising=False)
    pytester.makeini("[pytest]\nmarkers =\n    realkernel: in the testbed\n")
    pytester.makepyfile(
        test_guest="import pytest\n"
        "@pytest.mark.realkernel(init='upstart')\ndef test_x():\n    pass\n"
    )
    result = pytester.runpytest_inprocess("--collect-only", "-p", "tests.testbed.plugin")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_guest.py::test_x*TESTBED_INIT='upstart'*"])


def test_the_summary_names_the_boots_that_ran() -> None:
    assert plugin.boots_line([runner.Init.SYSTEMD]) == "testbed: 1 boot (systemd)"
    both = plugin.boots_line([runner.Init.CLASSIC, runner.Init.SYSTEMD])
    assert both == "testbed: 2 boots (classic, systemd)"


def test_a_boot_starts_only_after_a_started_peer_has_ended(pytestconfig: pytest.Config) -> None:
    peer = plugin.GuestRun(pytestconfig, ["a"], runner.Init.CLASSIC)
    peer.wait_ended()  # never started: nothing to wait for
    peer.started = True
    ended = threading.Timer(0.2, peer._done.set)
    ended.start()
    peer.wait_ended()
    assert peer._done.is_set()
    ended.join()


@pytest.mark.qemu
def test_a_hung_systemd_boot_ends_at_the_timeout_with_125_and_the_console(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.fail("the testbed runner needs root (9p shares): run the tests as root")
    options = runner.Options(init=runner.Init.SYSTEMD, timeout=8.0, cwd=tmp_path, install=False)
    result = runner.boot(["sleep", "infinity"], options, run_dir=tmp_path)
    assert result.timed_out
    assert result.returncode == runner.NO_EXIT_CODE
    assert "TIMEOUT: the boot ran past TESTBED_TIMEOUT=8 s" in result.console_tail()


def test_each_test_gets_its_own_budget_from_its_start_and_an_overrun_names_it() -> None:
    budgets = plugin.Budgets(boot=100.0, default=50.0, per_test={"t.py::test_long": 500.0})
    budgets.since = 0.0
    assert budgets.overrun(99.0) is None  # booting
    budgets.started("t.py::test_a", 99.0)
    assert budgets.overrun(148.0) is None
    budgets.finished("t.py::test_a", 148.0)
    budgets.started("t.py::test_long", 150.0)  # its own, longer budget
    assert budgets.overrun(600.0) is None
    budgets.finished("t.py::test_long", 600.0)
    budgets.started("t.py::test_b", 601.0)  # a slow boot so far costs test_b nothing
    assert budgets.overrun(650.0) is None
    reason = budgets.overrun(652.0)
    assert reason is not None
    assert reason.startswith("t.py::test_b ran past its budget of 50 s")
    assert "realkernel(budget=S)" in reason


def test_a_boot_with_no_test_running_gets_the_boot_budget() -> None:
    budgets = plugin.Budgets(boot=100.0, default=50.0)
    budgets.since = 10.0
    assert budgets.overrun(110.0) is None
    reason = budgets.overrun(111.0)
    assert reason is not None
    assert "TESTBED_BOOT_BUDGET=100" in reason


def test_the_guest_says_when_each_test_starts_and_the_budget_follows_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, pytestconfig: pytest.Config
) -> None:
    pytester.makeini("[pytest]\nmarkers =\n    realkernel: in the testbed\n")
    pytester.makepyfile(test_guest=GUEST_TESTS)
    monkeypatch.setenv("TESTBED", "1")
    monkeypatch.setenv("PYTHONPATH", str(runner.CHECKOUT))
    reports = pytester.path / "reports.jsonl"
    pytester.runpytest_subprocess(
        "-p", "tests.testbed.plugin", f"--testbed-report={reports}", "-m", "realkernel"
    )  # fmt: skip
    lines = reports.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    started = [record["start"] for record in records if "start" in record]
    assert started == [
        "test_guest.py::test_passes", "test_guest.py::test_fails", "test_guest.py::test_skipped"
    ]
    reader = plugin.ReportReader(pytestconfig)
    cut = records.index({"start": "test_guest.py::test_fails"})
    reader.feed(("\n".join(lines[: cut + 1]) + "\n").encode())
    assert reader.budgets.running == "test_guest.py::test_fails"  # started, not yet torn down
    reader.feed(("\n".join(lines[cut + 1:]) + "\n").encode())
    assert reader.budgets.running is None


def test_a_watchdog_sentence_stops_the_boot_and_is_the_timeout_reason() -> None:
    process = subprocess.Popen(["sleep", "60"])
    try:
        asked: list[int] = []

        def watchdog() -> str | None:
            asked.append(1)
            return "t.py::test_x ran past its budget of 1 s" if len(asked) >= 2 else None

        assert runner._wait(process, 3600.0, watchdog) == "t.py::test_x ran past its budget of 1 s"
    finally:
        runner.stop(process)


def test_a_budget_that_runs_out_fails_the_unreported_tests_naming_the_one_that_ran(
    tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    run = plugin.GuestRun(pytestconfig, ["t.py::test_slow", "t.py::test_next"],
                          budgets={"t.py::test_next": 3600.0})
    run.reader.budgets.default = 0.0  # test_slow's budget runs out at once
    run.run_dir = tmp_path
    (tmp_path / plugin.REPORTS).write_text(json.dumps({"start": "t.py::test_slow"}) + "\n")
    reason = run.watchdog()  # what the runner asks every second while the guest runs
    assert reason is not None
    assert reason.startswith("t.py::test_slow ran past its budget of 0 s")
    kernel = runner.Kernel("linux-image-x", "1", "x", tmp_path)
    run.result = runner.Result(
        returncode=runner.NO_EXIT_CODE, run_dir=tmp_path, console_path=tmp_path / "console.log",
        accel=runner.Accel("tcg", "q35", "max", ""), kernel=kernel, timed_out=True,
        init=runner.Init.CLASSIC, setup_seconds=0.0, ready_seconds=None,
        command_start_seconds=None, vm_seconds=1.0, qemu_argv=[], timeout_reason=reason,
    )
    missing = run.why_missing("t.py::test_next")
    assert "the testbed guest did not report t.py::test_next" in missing
    assert f"the guest was stopped: {reason}" in missing
