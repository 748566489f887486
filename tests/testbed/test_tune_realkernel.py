"""Tuning on a real kernel: the testbed's systemd boot (2 cores x 2 SMT threads, Intel ``max``).

The nested VM asks ``pin = "auto"`` with ``threads = 2`` and 2M hugepages:
``auto`` keeps the first core (CPUs 0-1, siblings) for the host and puts the
guest's one core on the other (vCPU 0 -> CPU 2, vCPU 1 -> CPU 3); every
other QEMU thread goes to CPUs 0-1. Everything is read back from the
kernel: /proc/<qemu>/task/<tid>/status and
/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages. A supervisor
SIGKILLed mid-session leaves the pool raised; once its QEMU is gone (and
with it the affinities) `handoff recover` puts the pool back. Each refusal
changes nothing. With ``isolate = true`` (the real systemd as PID 1):
system.slice, user.slice and init.scope have AllowedCPUs=0-1 (systemctl)
and cpuset.cpus 0-1 (the kernel) while the VM runs, QEMU runs in
machine.slice/handoff-NAME-qemu.scope with CPUs 0-3, and all is back after
Ctrl-C, and after a supervisor SIGKILL + `handoff recover`. No wall-clock
assertion: waits are on conditions with generous limits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.testbed import guest

pytestmark = [pytest.mark.realkernel(init="systemd"), pytest.mark.usefixtures("systemd_boot")]

CHECKOUT = Path(__file__).resolve().parents[2]
POOL = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
WAIT = 600.0  # a nested TCG QEMU under a loaded 2-core host is slow
PROFILE = """\
[vm]
name = "{name}"
memory = "64M"
cpus = 2
sockets = 1
cores = 1
threads = 2
accel = "tcg"
shutdown_timeout = 2

[display]
vga = "none"
frontend = "none"

[cpu]
pin = "auto"

[memory]
hugepages = "2M"
"""


def siblings(cpu: int) -> str:
    return Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text()


def pool() -> int:
    return int(POOL.read_text())


class Supervisor:
    """A real `handoff run` whose stdout lines are collected by a reader thread."""

    def __init__(self, profile: Path, run_dir: Path) -> None:
        self.env = {**os.environ, "HANDOFF_RUN_DIR": str(run_dir)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "handoff", "run", str(profile)], cwd=CHECKOUT, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str) -> str:
        def seen() -> str | None:
            found = next((line for line in self.lines if text in line), None)
            if found is None and self.process.poll() is not None:
                raise AssertionError(f"handoff exited without {text!r}: {self.lines}")
            return found

        return guest.wait_for(seen, f"handoff to say {text!r}", timeout=WAIT)

    @property
    def qemu_pid(self) -> int:
        line = self.wait_for("QEMU started, pid")
        return int(line.split("pid ")[1].split()[0])

    def close(self) -> None:
        """The process gone (killed if still running), its output read to the end and closed."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=WAIT)
        self._reader.join(timeout=WAIT)
        assert self.process.stdout is not None
        self.process.stdout.close()

    def handoff(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "handoff", *args], cwd=CHECKOUT, env=self.env,
            capture_output=True, text=True, timeout=WAIT, check=False,
        )  # fmt: skip


@pytest.fixture
def profiles(tmp_path: Path) -> Iterator[Path]:
    before = pool()
    yield tmp_path
    assert pool() == before, "a test left the hugepage pool changed"


@pytest.fixture
def start(profiles: Path) -> Iterator[Callable[[Path], Supervisor]]:
    """Factory: a `handoff run` of a profile; each is closed (killed if needed) at teardown."""
    started: list[Supervisor] = []

    def run(profile: Path) -> Supervisor:
        started.append(Supervisor(profile, profiles / "run"))
        return started[-1]

    yield run
    for sup in started:
        killed = sup.process.poll() is None
        sup.close()
        qemu = next((int(line.split("pid ")[1].split()[0]) for line in sup.lines
                     if "QEMU started, pid" in line), None)  # fmt: skip
        if killed and qemu is not None:  # a failed test: its QEMU and host changes go too
            stop(qemu)
            sup.handoff("recover")


def write(directory: Path, name: str, text: str = PROFILE) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(text.format(name=name))
    return path


def affinities(pid: int) -> dict[str, str]:
    """'<thread name> <tid>' -> Cpus_allowed_list, for every thread of QEMU."""
    out: dict[str, str] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = dict(
            line.split(":\t", 1)
            for line in (task / "status").read_text().splitlines()
            if ":\t" in line
        )
        out[f"{fields['Name'].strip()} {task.name}"] = fields["Cpus_allowed_list"].strip()
    return out


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def stop(qemu: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(qemu, signal.SIGKILL)
    guest.wait_for(lambda: gone(qemu) or None, "QEMU to be gone", timeout=WAIT)


def test_the_guest_has_smt_siblings_to_pin_to() -> None:
    assert siblings(0).strip() == "0-1"
    assert siblings(2).strip() == "2-3"


def test_auto_pins_every_thread_and_the_pool_is_raised_while_it_runs_and_back_after(
    profiles: Path, start: Callable[[Path], Supervisor]
) -> None:
    before = pool()
    sup = start(write(profiles, "tuned"))
    sup.wait_for("handoff: running")
    threads = affinities(sup.qemu_pid)
    vcpus = sorted((k, v) for k, v in threads.items() if k.startswith("CPU "))
    assert [(k.split()[1], v) for k, v in vcpus] == [("0/TCG", "2"), ("1/TCG", "3")], threads
    others = {k: v for k, v in threads.items() if not k.startswith("CPU ")}
    assert others, threads
    assert set(others.values()) == {"0-1"}, threads
    assert pool() == before + 32  # 64 MiB in 2 MiB pages
    status = json.loads(sup.handoff("status", "tuned", "--json").stdout)
    pinned = {t["tid"]: t["cpus"] for t in status["resources"]["tune"]["threads"]}
    assert {str(tid) for tid in pinned} == {k.split()[-1] for k in threads}
    sup.process.send_signal(signal.SIGINT)
    assert sup.process.wait(timeout=WAIT) == 130
    sup.close()
    text = "\n".join(sup.lines)
    assert f"restored the global 2M hugepage pool back to {before}" in text
    assert pool() == before


def test_recover_restores_the_pool_after_the_supervisor_is_sigkilled(
    profiles: Path, start: Callable[[Path], Supervisor]
) -> None:
    before = pool()
    sup = start(write(profiles, "killed"))
    sup.wait_for("handoff: running")
    qemu = sup.qemu_pid
    sup.process.send_signal(signal.SIGKILL)
    sup.process.wait(timeout=WAIT)
    assert pool() == before + 32
    left = sup.handoff("recover")  # QEMU still runs and holds the pages: left alone
    assert left.returncode == 1, left.stdout + left.stderr
    assert f"its QEMU (pid {qemu}) is still running" in left.stdout
    assert pool() == before + 32
    os.kill(qemu, signal.SIGKILL)
    guest.wait_for(lambda: gone(qemu) or None, "QEMU to be gone", timeout=WAIT)
    assert not Path(f"/proc/{qemu}/task").exists()  # its affinities went with it
    done = sup.handoff("recover")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hugepage pool back to" in done.stdout
    assert pool() == before
    assert not list((profiles / "run" / "journal").glob("*+tune.json"))


UNITS = ("system.slice", "user.slice", "init.scope")
ISOLATED = PROFILE.replace('pin = "auto"', 'pin = "auto"\nisolate = true')


def allowed(unit: str) -> str:
    return subprocess.run(
        ["systemctl", "show", "-p", "AllowedCPUs", "--value", unit],
        capture_output=True, text=True, check=True, timeout=WAIT,
    ).stdout.strip()  # fmt: skip


def cpuset(cgroup: str) -> str | None:
    """The cgroup's cpuset.cpus (None: no cpuset controller there)."""
    path = Path("/sys/fs/cgroup") / cgroup / "cpuset.cpus"
    return path.read_text().strip() if path.exists() else None


def host_units() -> dict[str, tuple[str, str | None]]:
    return {unit: (allowed(unit), cpuset(unit)) for unit in UNITS}


def unconfined(state: dict[str, tuple[str, str | None]]) -> bool:
    """Every unit's AllowedCPUs unset and its cpuset.cpus absent, empty or every CPU."""
    return all(a == "" and c in (None, "", "0-3") for a, c in state.values())


def qemu_cgroup(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text().strip()


def test_isolate_confines_the_host_units_while_the_vm_runs_and_not_after(
    profiles: Path, start: Callable[[Path], Supervisor]
) -> None:
    before = host_units()
    assert unconfined(before), before
    profile = write(profiles, "iso", ISOLATED)
    printed = subprocess.run(
        [sys.executable, "-m", "handoff", "argv", str(profile)], cwd=CHECKOUT,
        capture_output=True, text=True, timeout=WAIT, check=True,
    ).stdout  # fmt: skip
    assert printed.startswith("systemd-run --scope "), printed
    sup = start(profile)
    sup.wait_for("handoff: running")
    qemu = sup.qemu_pid
    during = host_units()
    assert {u: a for u, (a, _) in during.items()} == {u: "0-1" for u in UNITS}, during
    # A unit without tasks has no cgroup (user.slice without logins): systemd applies it later.
    assert {u: c for u, (_, c) in during.items() if Path("/sys/fs/cgroup", u).is_dir()} == {
        u: "0-1" for u in UNITS if Path("/sys/fs/cgroup", u).is_dir()
    }, during
    assert during["system.slice"][1] == "0-1", during
    assert during["init.scope"][1] == "0-1", during
    assert qemu_cgroup(qemu) == "0::/machine.slice/handoff-iso-qemu.scope"
    assert cpuset("machine.slice/handoff-iso-qemu.scope") == "0-3"
    # systemd-run execs QEMU under the same pid, by its absolute path; the rest is the argv's.
    cmdline = Path(f"/proc/{qemu}/cmdline").read_bytes().decode().split("\0")[:-1]
    assert cmdline[0].endswith("/qemu-system-x86_64"), cmdline
    assert cmdline[1:4] == printed.split("-- qemu-system-x86_64 ", 1)[1].split()[:3], cmdline
    threads = affinities(qemu)
    vcpus = sorted((k.split()[1], v) for k, v in threads.items() if k.startswith("CPU "))
    assert vcpus == [("0/TCG", "2"), ("1/TCG", "3")], threads
    status = json.loads(sup.handoff("status", "iso", "--json").stdout)["resources"]["tune"]
    assert status["isolated_units"] == [{"unit": u, "allowed_cpus": "0-1"} for u in UNITS]
    assert status["qemu_scope"] == "machine.slice/handoff-iso-qemu.scope"
    assert any("isolated: system.slice, user.slice, init.scope on CPUs 0-1" in line
               for line in sup.lines), sup.lines
    sup.process.send_signal(signal.SIGINT)
    assert sup.process.wait(timeout=WAIT) == 130
    sup.close()
    assert unconfined(host_units()), host_units()
    assert "restored system.slice's AllowedCPUs back to (unset: every CPU)" in "\n".join(sup.lines)


def test_recover_unconfines_the_host_after_the_supervisor_is_sigkilled(
    profiles: Path, start: Callable[[Path], Supervisor]
) -> None:
    sup = start(write(profiles, "isokill", ISOLATED))
    sup.wait_for("handoff: running")
    qemu = sup.qemu_pid
    sup.process.send_signal(signal.SIGKILL)
    sup.process.wait(timeout=WAIT)
    assert {u: a for u, (a, _) in host_units().items()} == {u: "0-1" for u in UNITS}
    left = sup.handoff("recover")  # its QEMU still runs: the journal is left alone
    assert left.returncode == 1, left.stdout + left.stderr
    assert {u: a for u, (a, _) in host_units().items()} == {u: "0-1" for u in UNITS}
    os.kill(qemu, signal.SIGKILL)
    guest.wait_for(lambda: gone(qemu) or None, "QEMU to be gone", timeout=WAIT)
    done = sup.handoff("recover")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "user.slice's AllowedCPUs back to" in done.stdout
    assert unconfined(host_units()), host_units()
    assert not list((profiles / "run" / "journal").glob("*+tune.json"))


def test_a_refused_isolated_start_changes_nothing(
    profiles: Path, start: Callable[[Path], Supervisor]
) -> None:
    """QEMU's scope name is taken (another QEMU of the profile, say): nothing is confined."""
    before, pages = host_units(), pool()
    squatter = subprocess.Popen(
        ["systemd-run", "--scope", "--quiet", "--unit=handoff-isotaken-qemu", "sleep", "600"]
    )
    try:
        guest.wait_for(
            lambda: "handoff-isotaken-qemu.scope" in qemu_cgroup(squatter.pid) or None,
            "the squatting scope", timeout=WAIT,
        )
        sup = start(write(profiles, "isotaken", ISOLATED))
        assert sup.process.wait(timeout=WAIT) == 2
        sup.close()
    finally:
        squatter.kill()
        squatter.wait(timeout=WAIT)
    out = "\n".join(sup.lines)
    assert "handoff-isotaken-qemu.scope already exists (active)" in out, out
    assert "QEMU started" not in out, out
    assert host_units() == before
    assert pool() == pages


def test_each_refusal_changes_nothing(
    profiles: Path, start: Callable[[Path], Supervisor]
) -> None:
    before = pool()
    too_big = PROFILE.replace("cpus = 2", "cpus = 4").replace("cores = 1", "cores = 2")
    for name, text, expected in (("toobig", too_big, "physical cores"),):
        sup = start(write(profiles, name, text))
        assert sup.process.wait(timeout=WAIT) == 2
        sup.close()
        out = "\n".join(sup.lines)
        assert expected in out, out
        assert "QEMU started" not in out
        assert pool() == before
        assert not (profiles / "run" / name).exists()
