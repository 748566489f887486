"""The emulated TPM and the guest agent, under `handoff run`, with a real Linux guest.

The guest is Debian's kernel with a busybox initramfs running Debian's
qemu-ga (tests/qemu/linux_guest.py), booted by OVMF under TCG. It reads its
TPM through the kernel (/sys/class/tpm, /dev/tpm0) and prints what it saw on
its serial console. swtpm and swtpm_setup are Debian's; nothing is mocked.
Two guest boots (~1-3 min each on a loaded host) carry the TPM, persistence,
agent and ACPI checks; the exit-path checks need no booted guest.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.qemu.linux_guest import KERNEL_ARGS, build_guest, guest_facts

REPO = Path(__file__).resolve().parents[2]
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
#: Bounds, generous for a loaded two-core host: OVMF + Linux under TCG.
BOOT_LIMIT = 900.0
STEP_LIMIT = 300.0
NAME = "tpmguest"


def wait_until(check: Callable[[], bool], what: str, limit: float = STEP_LIMIT) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {limit:g} s")
        time.sleep(0.2)


class Run:
    """A `handoff run PROFILE` subprocess whose output lines are collected."""

    def __init__(self, profile: Path, run_dir: Path) -> None:
        self.env = {**os.environ, "HANDOFF_RUN_DIR": str(run_dir)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "handoff", "run", str(profile)], cwd=REPO, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, fragment: str, limit: float = STEP_LIMIT) -> str:
        def seen() -> bool:
            if self.process.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"handoff exited without {fragment!r}:\n{self.text}")
            return any(fragment in line for line in self.lines)

        wait_until(seen, repr(fragment), limit)
        return next(line for line in self.lines if fragment in line)

    @property
    def qemu_pid(self) -> int:
        return int(self.wait_line("QEMU started, pid").split("pid ")[1].split()[0])

    def finish(self, limit: float = STEP_LIMIT) -> int:
        try:
            code = self.process.wait(timeout=limit)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code

    def status(self) -> dict[str, object]:
        done = subprocess.run(
            [sys.executable, "-m", "handoff", "status", NAME, "--json"], cwd=REPO, env=self.env,
            capture_output=True, text=True, check=True, timeout=120,
        )
        result: dict[str, object] = json.loads(done.stdout)
        return result

    def human_status(self) -> str:
        return subprocess.run(
            [sys.executable, "-m", "handoff", "status", NAME], cwd=REPO, env=self.env,
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout


def swtpm_pids(state: Path) -> list[int]:
    """The swtpm processes serving ``state`` (by their command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"swtpm") and any(str(state).encode() in a for a in argv):
            found.append(int(entry.name))
    return found


def process_gone(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return text.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture(scope="module")
def guest() -> Iterator[tuple[Path, Path]]:
    work = Path(tempfile.mkdtemp(prefix="handoff-tpm-guest-"))
    work.chmod(0o755)
    try:
        yield build_guest(work)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


@pytest.fixture
def where() -> Iterator[Path]:
    """A directory every user can enter (the profile, vars and TPM state live here)."""
    path = Path(tempfile.mkdtemp(prefix="handoff-tpm-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def profile(where: Path, *, extra: list[str] | None = None, user: str | None = None,
            agent: bool = True) -> Path:
    lines = [
        "[vm]", f'name = "{NAME}"', 'memory = "256M"', "cpus = 1", 'accel = "tcg"',
        "shutdown_timeout = 300",
    ]
    if user is not None:
        lines.append(f'user = "{user}"')
    if extra:
        lines.append("extra_args = [" + ", ".join(json.dumps(a) for a in extra) + "]")
    lines += [
        "[firmware]", 'type = "ovmf"', f'code = "{OVMF_CODE}"', f'vars_template = "{OVMF_VARS}"',
        "[tpm]", 'type = "emulated"',
        "[guest_agent]", f"enabled = {'true' if agent else 'false'}",
    ]
    path = where / f"{NAME}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def boot_args(guest: tuple[Path, Path], serial: Path, *, agent: bool) -> list[str]:
    vmlinuz, initrd = guest
    append = KERNEL_ARGS + ("" if agent else " noagent")
    return ["-kernel", str(vmlinuz), "-initrd", str(initrd), "-append", append,
            "-serial", f"file:{serial}"]


def test_a_linux_guest_sees_a_tpm2_that_keeps_its_keys_and_powers_off_through_its_agent(
    guest: tuple[Path, Path], where: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    state = where / f"{NAME}.tpm"
    serial = where / "serial-1.log"
    path = profile(where, extra=boot_args(guest, serial, agent=True))
    argv = subprocess.run(
        [sys.executable, "-m", "handoff", "argv", str(path)], cwd=REPO, capture_output=True,
        text=True, check=True,
    ).stdout
    assert "-tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-crb,tpmdev=tpm0" in argv
    assert "name=org.qemu.guest_agent.0" in argv

    first = Run(path, run_dir)
    try:
        first.wait_line("running (stop:")
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert (run_dir / "qemu" / NAME / "tpm.sock").is_socket()
        wait_until(lambda: "GUESTREADY" in guest_facts(serial), "booted guest", BOOT_LIMIT)
        facts = guest_facts(serial)
        assert facts["TPMMAJOR"] == "2"  # a TPM 2.0
        pcr0 = facts["PCR0"]
        assert len(pcr0) == 64
        assert set(pcr0) != {"0"}
        ek = facts["EKPUB"]
        assert ek[:4] == "8001", ek  # TPM_ST_NO_SESSIONS
        assert ek[12:20] == "00000000", ek  # TPM_RC_SUCCESS
        assert len(ek) > 500  # the RSA 2048 EK's public area and name

        def agent() -> dict[str, object]:
            answer = first.status().get("guest_agent")
            assert isinstance(answer, dict)
            return answer

        wait_until(lambda: agent()["answers"] is True, "answer from the guest agent")
        assert agent()["os"] == "handoff test guest 1.0"
        assert "guest agent: answers; guest OS handoff test guest 1.0" in first.human_status()
        first.process.send_signal(signal.SIGINT)
        assert first.finish() == 130, first.text
    finally:
        if first.process.poll() is None:
            first.process.kill()
            first.finish()
    assert "through its agent (guest-shutdown" in first.text
    assert "SHUTDOWN-BY-AGENT -h -P +0" in serial.read_text()  # qemu-ga ran the shutdown
    assert "SHUTDOWN by the guest" in first.text
    assert swtpm_pids(state) == []

    # The next run: the same TPM (the EK swtpm_setup made is read back); no agent
    # in the guest this time, so Ctrl-C falls back to ACPI's power button.
    serial2 = where / "serial-2.log"
    path = profile(where, extra=boot_args(guest, serial2, agent=False))
    second = Run(path, run_dir)
    try:
        second.wait_line("running (stop:")
        assert "created the VM's TPM 2.0 state" not in second.text
        wait_until(lambda: "GUESTREADY" in guest_facts(serial2), "booted guest", BOOT_LIMIT)
        again = guest_facts(serial2)
        assert again["EKPUB"] == ek
        assert again["TPMMAJOR"] == "2"
        assert set(again["PCR0"]) != {"0"}
        answer = second.status()["guest_agent"]
        assert isinstance(answer, dict)
        assert answer["answers"] is False
        second.process.send_signal(signal.SIGINT)
        assert second.finish() == 130, second.text
    finally:
        if second.process.poll() is None:
            second.process.kill()
            second.finish()
    assert "the guest agent does not answer guest-ping: using ACPI" in second.text
    assert "POWERBUTTON" in serial2.read_text()  # system_powerdown reached the guest
    assert "SHUTDOWN by the guest" in second.text
    assert swtpm_pids(state) == []


def test_swtpm_ends_when_qemu_crashes(where: Path, tmp_path: Path) -> None:
    state = where / f"{NAME}.tpm"
    run = Run(profile(where, agent=False), tmp_path / "run")
    try:
        run.wait_line("running (stop:")
        (tpm,) = swtpm_pids(state)
        os.kill(run.qemu_pid, signal.SIGKILL)
        assert run.finish() != 0
    finally:
        if run.process.poll() is None:
            run.process.kill()
            run.finish()
    assert "released tpm" in run.text
    assert process_gone(tpm)
    assert swtpm_pids(state) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="vm.user needs root")
def test_swtpm_runs_as_vm_user_and_ends_after_qemu_when_the_supervisor_is_killed(
    where: Path,
) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    state = where / f"{NAME}.tpm"
    run_dir = where / "run"  # QEMU's socket directory must be reachable by nobody
    run = Run(profile(where, user="nobody", agent=False), run_dir)
    try:
        run.wait_line("running (stop:")
        socket = run_dir / "qemu" / NAME / "tpm.sock"
        for owned in (state, state / "tpm2-00.permall", socket):
            assert owned.lstat().st_uid == nobody.pw_uid, owned
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        (tpm,) = swtpm_pids(state)
        assert Path(f"/proc/{tpm}").stat().st_uid == nobody.pw_uid
        qemu = run.qemu_pid
        run.process.kill()  # SIGKILL: no cleanup at all
        run.finish()
        time.sleep(1.0)
        assert not process_gone(tpm)  # still serving the QEMU that still runs
        os.kill(qemu, signal.SIGKILL)
        wait_until(lambda: process_gone(tpm), "swtpm exit after QEMU's", 60)
    finally:
        if run.process.poll() is None:
            run.process.kill()
            run.finish()
    assert swtpm_pids(state) == []


def test_a_damaged_tpm_state_fails_the_launch_with_swtpms_own_words(where: Path) -> None:
    state = where / f"{NAME}.tpm"
    state.mkdir(mode=0o700)
    (state / "tpm2-00.permall").write_bytes(b"\x00not a TPM state" * 64)
    path = profile(where, agent=False)
    done = subprocess.run(
        [sys.executable, "-m", "handoff", "run", str(path)], cwd=REPO,
        env={**os.environ, "HANDOFF_RUN_DIR": str(where / "run")},
        capture_output=True, text=True, timeout=STEP_LIMIT, check=False,
    )
    assert done.returncode == 2, done
    assert "swtpm: Error: Could not initialize the TPM" in done.stderr  # its log tail
    assert "fix: swtpm could not start the VM's TPM from its state" in done.stderr
    assert "Traceback" not in done.stderr
    assert (state / "tpm2-00.permall").read_bytes() == b"\x00not a TPM state" * 64
    assert swtpm_pids(state) == []


def test_an_agent_that_never_answers_leaves_acpi_its_turn_within_the_guests_time(
    where: Path,
) -> None:
    path = profile(where)  # [guest_agent] on; firmware only, no guest OS, no agent
    path.write_text(path.read_text().replace("shutdown_timeout = 300", "shutdown_timeout = 4"))
    run = Run(path, where / "run")
    try:
        run.wait_line("running (stop:")
        run.process.send_signal(signal.SIGINT)
        assert run.finish() == 130, run.text
    finally:
        if run.process.poll() is None:
            run.process.kill()
            run.finish()
    lines = run.lines
    fallback = lines.index("handoff: the guest agent does not answer guest-ping: using ACPI")
    assert lines[fallback + 1] == "handoff: asking the guest to power off (up to 4 s)"
    assert "handoff: the guest did not power off within 4 s" in lines[fallback + 2 :]
