"""The Hyper-V flags handoff keeps are accepted by this host's QEMU (TCG: KVM is not here).

What is proven here and what is not (tests/README.md says the same): every flag
of the KVM set but hv-vpindex starts under TCG (QEMU parses and applies the
properties); hv-vpindex is refused by QEMU without KVM, which is why a TCG
session drops it and its dependants. That KVM accepts the set, and that the
dependencies of handoff.qemu.hyperv.DEPENDS are KVM's, needs a KVM host.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from handoff.profile import Accelerator
from handoff.qemu.capabilities import probe
from handoff.qemu.hyperv import ENLIGHTENMENTS, HOST_ENLIGHTENMENTS, KVM_ONLY, enlightenments

from .conftest import QEMU

pytestmark = pytest.mark.qemu

QUIT = '{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n'


def start_and_quit(*args: str) -> subprocess.CompletedProcess[str]:
    """QEMU paused with ``args``, asked to quit over QMP on stdio."""
    return subprocess.run(
        [QEMU, "-nodefaults", "-display", "none", "-m", "64", "-S", "-qmp", "stdio", *args],
        input=QUIT, capture_output=True, text=True, timeout=120, check=False,
    )


def test_the_probe_knows_every_flag_handoff_can_give() -> None:
    caps = probe(QEMU)
    for flag, _ in (*ENLIGHTENMENTS, *HOST_ENLIGHTENMENTS):
        assert flag.split("=")[0] in caps.cpu_properties
    assert "hpet" in caps.machine_options
    assert "smm" in caps.machine_options


def test_what_the_probe_keeps_under_tcg_starts_with_the_windows_clock() -> None:
    caps = probe(QEMU)
    flags, warnings = enlightenments(Accelerator.TCG, caps.cpu_properties)
    assert len(warnings) == 1
    assert "hv-vpindex" in warnings[0]
    done = start_and_quit(
        "-machine", "q35,accel=tcg,hpet=off", "-cpu", ",".join(["max", *flags]),
        "-rtc", "base=localtime,driftfix=slew",
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_the_kvm_set_but_vpindex_is_accepted_and_vpindex_needs_kvm() -> None:
    caps = probe(QEMU)
    flags, warnings = enlightenments(Accelerator.KVM, caps.cpu_properties, host_evmcs=True)
    assert warnings == ()
    assert "hv-evmcs" in flags
    assert "hv-stimer-direct" in flags
    tcg_can = [f for f in flags if f.split("=")[0] != "hv-vpindex"]
    done = start_and_quit(
        "-machine", "q35,accel=tcg,hpet=off", "-cpu", ",".join(["max", *tcg_can]),
        "-global", "kvm-pit.lost_tick_policy=delay", "-rtc", "base=localtime,driftfix=slew",
    )
    assert done.returncode == 0, done.stderr
    refused = start_and_quit("-machine", "q35,accel=tcg", "-cpu", "max,hv-vpindex")
    assert refused.returncode != 0
    assert "VP_INDEX" in refused.stderr
    assert {"hv-vpindex"} <= KVM_ONLY


def test_a_windows_profile_runs_under_handoff_with_one_warning_line(tmp_path: Path) -> None:
    """`handoff run` of a Windows guest (Hyper-V, clock, Secure Boot UEFI) starts under TCG."""
    profile = tmp_path / "win.toml"
    profile.write_text(
        '[vm]\nname = "i20-win"\nmemory = "256M"\ncpus = 1\naccel = "tcg"\nos = "windows"\n'
        'hide_hypervisor = true\nshutdown_timeout = 1\n'
        '[firmware]\ntype = "ovmf"\nsecure_boot = true\n'
    )
    env = {**os.environ, "HANDOFF_RUN_DIR": str(tmp_path / "run")}
    shown = subprocess.run(
        [sys.executable, "-m", "handoff", "argv", str(profile)], env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr.count("handoff: warning: vm.hyperv:") == 1
    argv = shown.stdout.split()
    assert "q35,accel=tcg,smm=on,hpet=off" in argv
    assert "max,kvm=off,hv-vendor-id=handoffvm,hv-relaxed,hv-vapic,hv-spinlocks=0x1fff," \
        "hv-runtime,hv-reset,hv-frequencies,hv-time" in argv
    with (tmp_path / "out").open("w") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "handoff", "run", str(profile)], env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 300
        while "handoff: running" not in (tmp_path / "out").read_text():
            assert run.poll() is None, (tmp_path / "out").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        stop = subprocess.run(
            [sys.executable, "-m", "handoff", "stop", "i20-win"], env=env, capture_output=True,
            text=True, timeout=60, check=False,
        )
        assert stop.returncode == 0, stop.stderr
        assert run.wait(timeout=120) == 0
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    text = (tmp_path / "out").read_text()
    assert "handoff: warning: vm.hyperv: without KVM QEMU refuses hv-vpindex" in text
