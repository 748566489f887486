"""The real `handoff` command as a subprocess: signals, status/stop, error output.

Each test runs `python -m handoff run PROFILE` with its own HANDOFF_RUN_DIR,
reads its status lines, and checks that every exit path leaves no QEMU and
no run directory behind.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio

from .conftest import (
    PANIC_BOOT_SECTOR,
    pid_gone,
    write_boot_disk,
    write_power_off_disk,
    write_profile,
)

pytestmark = pytest.mark.qemu


class RunningCli:
    """A `handoff run` subprocess whose stdout lines can be awaited."""

    def __init__(self, process: trio.Process, env: dict[str, str]) -> None:
        self.process = process
        self.env = env
        self.lines: list[str] = []
        self._changed = trio.Event()
        self.stderr = b""

    async def pump(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self.lines.append(line.decode())
                self._changed.set()
                self._changed = trio.Event()

    async def pump_stderr(self) -> None:
        assert self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.stderr += chunk

    async def wait_for(self, pattern: str) -> str:
        while True:
            for line in self.lines:
                if re.search(pattern, line):
                    return line
            if self.process.returncode is not None:
                raise AssertionError(f"exited without {pattern!r}: {self.lines}")
            await self._changed.wait()

    @property
    def qemu_pid(self) -> int:
        line = next(x for x in self.lines if "QEMU started, pid" in x)
        match = re.search(r"pid (\d+)", line)
        assert match is not None
        return int(match[1])

    def text(self) -> str:
        return "\n".join(self.lines)


StartCli = Callable[[Path, trio.Nursery], Awaitable[RunningCli]]


def cli_env(run_dir: Path) -> dict[str, str]:
    return {**os.environ, "HANDOFF_RUN_DIR": str(run_dir)}


@pytest.fixture
async def start_cli(tmp_path: Path) -> AsyncIterator[StartCli]:
    """Factory: start `handoff run PROFILE`; kills what is left at teardown."""
    started: list[RunningCli] = []

    async def start(profile: Path, nursery: trio.Nursery) -> RunningCli:
        env = cli_env(tmp_path / "run")
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "handoff", "run", str(profile)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        cli = RunningCli(process, env)
        started.append(cli)
        nursery.start_soon(cli.pump)
        nursery.start_soon(cli.pump_stderr)
        return cli

    yield start
    for cli in started:
        if cli.process.returncode is None:
            cli.process.kill()
            await cli.process.wait()


async def handoff(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "handoff", *args], env=env, capture_stdout=True,
        capture_stderr=True, check=False,
    )


def assert_gone(cli: RunningCli, run_dir: Path) -> None:
    assert pid_gone(cli.qemu_pid), "QEMU is still running"
    assert not run_dir.exists(), f"run directory left behind: {list(run_dir.iterdir())}"


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
)
async def test_a_signal_to_the_supervisor_runs_the_ladder_and_exits_with_128_plus_it(
    tmp_path: Path, start_cli: StartCli, signum: int, status: int
) -> None:
    profile = write_profile(tmp_path, "sig", shutdown_timeout=0.5)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            cli = await start_cli(profile, nursery)
            await cli.wait_for("^handoff: running")
            cli.process.send_signal(signum)
            assert await cli.process.wait() == status
    name = signal.Signals(signum).name
    text = cli.text()
    assert f"{name}: stopping (again to force)" in text
    assert "asking the guest to power off (up to 0.5 s)" in text
    assert "asking QEMU to quit" in text
    assert f"ended: stopped on {name}; QEMU exited with status 0 (exit {status})" in text
    assert cli.stderr == b""
    assert_gone(cli, tmp_path / "run" / "sig")


async def test_a_second_sigint_skips_the_wait_for_the_guest(
    tmp_path: Path, start_cli: StartCli
) -> None:
    # Without the second Ctrl-C the firmware-only guest would hold the ladder 600 s.
    profile = write_profile(tmp_path, "force", shutdown_timeout=600)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            cli = await start_cli(profile, nursery)
            await cli.wait_for("^handoff: running")
            cli.process.send_signal(signal.SIGINT)
            await cli.wait_for("asking the guest to power off")
            cli.process.send_signal(signal.SIGINT)
            assert await cli.process.wait() == 130
    text = cli.text()
    assert "SIGINT again: forcing" in text
    assert "asking QEMU to quit" in text
    assert "did not power off" not in text
    assert_gone(cli, tmp_path / "run" / "force")


async def test_status_and_stop_work_through_the_cli_in_text_and_json(
    tmp_path: Path, start_cli: StartCli
) -> None:
    profile = write_profile(tmp_path, "ctl", shutdown_timeout=0.5)
    env = cli_env(tmp_path / "run")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            cli = await start_cli(profile, nursery)
            await cli.wait_for("^handoff: running")

            text = await handoff(env, "status", "ctl")
            assert text.returncode == 0, text.stderr
            out = text.stdout.decode()
            assert out.startswith("ctl: running\n")
            assert f"QEMU pid {cli.qemu_pid}" in out
            assert "accelerator tcg" in out

            listed = await handoff(env, "status", "--json")
            sessions = json.loads(listed.stdout)
            assert [s["profile"] for s in sessions] == ["ctl"]

            by_file = await handoff(env, "status", str(profile), "--json")
            status = json.loads(by_file.stdout)
            assert status["qemu_pid"] == cli.qemu_pid
            assert status["phase"] == "running"
            assert status["pid"] == cli.process.pid

            stop = await handoff(env, "stop", "ctl", "--json")
            assert stop.returncode == 0, stop.stderr
            assert json.loads(stop.stdout) == {"stopping": True, "force": False}
            assert await cli.process.wait() == 0
    assert "stop requested through the control socket" in cli.text()
    assert_gone(cli, tmp_path / "run" / "ctl")
    after = await handoff(env, "status", "ctl")
    assert after.returncode == 2
    assert after.stderr.decode().startswith("handoff: no session is running there")
    assert "  fix: " in after.stderr.decode()
    none = await handoff(env, "status")
    assert none.stdout.decode() == "no handoff session is running\n"


async def test_stop_force_through_the_cli_quits_qemu_at_once(
    tmp_path: Path, start_cli: StartCli
) -> None:
    profile = write_profile(tmp_path, "quit", shutdown_timeout=600)
    env = cli_env(tmp_path / "run")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            cli = await start_cli(profile, nursery)
            await cli.wait_for("^handoff: running")
            stop = await handoff(env, "stop", "quit", "--force")
            assert stop.stdout.decode() == "quit: stopping (forcing QEMU to quit); the " \
                "supervisor reports the end\n"
            assert await cli.process.wait() == 0
    assert "SHUTDOWN by the host (reason: host-qmp-quit)" in cli.text()
    assert_gone(cli, tmp_path / "run" / "quit")


async def test_a_second_run_of_the_same_profile_is_refused_with_the_holder_pid(
    tmp_path: Path, start_cli: StartCli
) -> None:
    profile = write_profile(tmp_path, "busy", shutdown_timeout=0.5)
    env = cli_env(tmp_path / "run")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            cli = await start_cli(profile, nursery)
            await cli.wait_for("^handoff: running")
            second = await handoff(env, "run", str(profile))
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.process.wait() == 143
    assert second.returncode == 2
    err = second.stderr.decode()
    assert f"profile 'busy' is already running (pid {cli.process.pid} holds" in err
    assert "Traceback" not in err
    assert "  fix: use `handoff status busy`" in err


async def test_a_launch_failure_prints_exit_code_command_and_log_without_traceback(
    tmp_path: Path,
) -> None:
    profile = write_profile(tmp_path, "bad", extra_args=("-no-such-flag",))
    result = await handoff(cli_env(tmp_path / "run"), "run", str(profile))
    assert result.returncode == 2
    err = result.stderr.decode()
    assert err.startswith("handoff: QEMU exited with status 1 before its monitor answered")
    assert re.search(r"\n  command: qemu-system-x86_64 .*-no-such-flag\n", err)
    assert "invalid option" in err
    assert "\n  fix: " in err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "bad").exists()


async def test_dry_run_prints_the_command_and_starts_nothing(tmp_path: Path) -> None:
    profile = write_profile(tmp_path, "dry")
    result = await handoff(cli_env(tmp_path / "run"), "run", "--dry-run", str(profile))
    assert result.returncode == 0
    out = result.stdout.decode()
    assert out.startswith("qemu-system-x86_64 -nodefaults ")
    assert "-chardev socket,id=qmp,fd=3 -mon chardev=qmp,mode=control" in out
    assert out.rstrip().endswith("-S")
    argv = await handoff(cli_env(tmp_path / "run"), "argv", str(profile))
    assert argv.stdout == result.stdout
    assert argv.stderr == result.stderr  # the same plan's host changes, from the same object
    changes = result.stderr.decode().splitlines()  # the plan's host changes, in order
    assert changes[0] == f"handoff: would: create-run-dir: {tmp_path / 'run' / 'dry'}: " \
        "0700, locked; removed after"
    assert not (tmp_path / "run").exists()


async def test_a_guest_that_powers_off_ends_the_command_with_status_0(tmp_path: Path) -> None:
    disk = write_power_off_disk(tmp_path / "off.img")
    profile = write_profile(tmp_path, "off", disk=disk)
    with trio.fail_after(60):
        result = await handoff(cli_env(tmp_path / "run"), "run", str(profile))
    assert result.returncode == 0, result.stderr
    assert "handoff: ended: the guest powered off (exit 0)" in result.stdout.decode()
    assert not (tmp_path / "run" / "off").exists()


async def test_a_guest_panic_ends_the_command_with_status_1(tmp_path: Path) -> None:
    disk = write_boot_disk(tmp_path / "panic.img", PANIC_BOOT_SECTOR)
    profile = write_profile(tmp_path, "panic", disk=disk, extra_args=("-device", "pvpanic"))
    with trio.fail_after(60):
        result = await handoff(cli_env(tmp_path / "run"), "run", str(profile))
    assert result.returncode == 1, result.stderr
    out = result.stdout.decode()
    assert "handoff: ended: the guest panicked; QEMU exited with status 0 (exit 1)" in out
    assert not (tmp_path / "run" / "panic").exists()


async def test_qemu_killed_from_outside_ends_the_command_with_status_1(
    tmp_path: Path, start_cli: StartCli
) -> None:
    profile = write_profile(tmp_path, "crash", shutdown_timeout=0.5)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            cli = await start_cli(profile, nursery)
            await cli.wait_for("^handoff: running")
            os.kill(cli.qemu_pid, signal.SIGKILL)
            assert await cli.process.wait() == 1
    assert re.search(
        r"ended: QEMU was killed by SIGKILL: QEMU crashed or was killed from outside handoff"
        r".* \(exit 1\)", cli.text()
    )
    assert "asking the guest" not in cli.text()
    assert_gone(cli, tmp_path / "run" / "crash")


# --------------------------------------------------------------------------- argv == what runs

REPO = Path(__file__).resolve().parents[2]
_QMP_FD = re.compile(r"^socket,id=qmp,fd=\d+$")


def without_fd_numbers(argv: list[str]) -> list[str]:
    """The argv with the QMP socketpair's fd number (the only run-time value) blanked."""
    return ["socket,id=qmp,fd=N" if _QMP_FD.match(arg) else arg for arg in argv]


def proc_cmdline(pid: int) -> list[str]:
    """The argv the kernel records for ``pid``."""
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read().rstrip(b"\0").decode().split("\0")


def qmp_input_profile_file(directory: Path) -> Path:
    path = write_profile(directory, "qmpin")
    path.write_text(
        path.read_text()
        + '[input]\nbackend = "qmp"\ndevices = ["name:no such keyboard on this host"]\n'
    )
    return path


@pytest.mark.parametrize("which", ["demo", "qmp-input"])
async def test_the_qemu_handoff_run_starts_is_the_command_handoff_argv_prints(
    tmp_path: Path, start_cli: StartCli, which: str
) -> None:
    profile = REPO / "profiles" / "demo.toml" if which == "demo" else (
        qmp_input_profile_file(tmp_path)
    )
    printed = await handoff(cli_env(tmp_path / "run"), "argv", str(profile))
    assert printed.returncode == 0, printed.stderr
    argv = shlex.split(printed.stdout.decode())
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            cli = await start_cli(profile, nursery)
            await cli.wait_for("^handoff: running")
            ran = proc_cmdline(cli.qemu_pid)
            cli.process.send_signal(signal.SIGINT)
            await cli.process.wait()
    assert without_fd_numbers(ran) == without_fd_numbers(argv)
    if which == "qmp-input":
        assert "chardev=handoff-input,mode=control" in ran


#: An interpreter every user can run (the venv's may live in root's private home); the
#: light commands (status, switch, stop) need only the standard library.
USER_PYTHON = "/usr/bin/python3"
CHECKOUT = Path(__file__).resolve().parents[2]


async def as_user(user: str, system_run: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """`handoff ARGS` run by another user from their own session (own run root empty)."""
    import pwd

    entry = pwd.getpwnam(user)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(CHECKOUT),
        "XDG_RUNTIME_DIR": f"/nonexistent-{entry.pw_uid}",
        "HANDOFF_SYSTEM_RUN_DIR": str(system_run),
    }
    return await trio.run_process(
        [USER_PYTHON, "-m", "handoff", *args], env=env, cwd="/", capture_stdout=True,
        capture_stderr=True, check=False, user=entry.pw_uid, group=entry.pw_gid,
        extra_groups=[],
    )  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="a root session and other users need root")
async def test_the_user_who_ran_sudo_controls_the_root_session_a_third_user_is_refused(
    tmp_path: Path,
) -> None:
    """`sudo handoff run` (SUDO_UID=daemon's uid): daemon's `handoff status NAME` and
    `stop NAME` reach the session from daemon's own session; nobody's are refused."""
    import pwd
    import tempfile

    desktop = pwd.getpwnam("daemon").pw_uid
    profile = write_profile(tmp_path, "desk", shutdown_timeout=0.5)
    with tempfile.TemporaryDirectory(prefix="handoff-sudo-") as top:
        os.chmod(top, 0o755)  # the system run root's parent: every user passes through
        run = Path(top) / "run"
        env = {**cli_env(run), "SUDO_UID": str(desktop)}
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "handoff", "run", str(profile)],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                )  # fmt: skip
                cli = RunningCli(process, env)
                nursery.start_soon(cli.pump)
                try:
                    await cli.wait_for("^handoff: running")
                    status = await as_user("daemon", run, "status", "desk", "--json")
                    listed = await as_user("daemon", run, "status")
                    third = await as_user("nobody", run, "status", "desk")
                    third_stop = await as_user("nobody", run, "stop", "desk")
                    stop = await as_user("daemon", run, "stop", "desk")
                    assert await process.wait() == 0
                finally:
                    if process.returncode is None:
                        process.kill()
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["pid"] == process.pid
        assert listed.stdout.decode().startswith("desk: running\n")
        for refused in (third, third_stop):
            assert refused.returncode == 2
            assert refused.stderr.decode().startswith(
                "handoff: the session 'desk' runs as root and does not let nobody control it"
            )
        assert stop.returncode == 0, stop.stderr
        assert "stop requested through the control socket" in cli.text()
        assert not (run / "control").exists()
        assert not (run / "desk").exists()


async def test_hooks_run_on_start_on_each_switch_and_on_stop_and_a_slow_one_is_killed(
    tmp_path: Path, start_cli: StartCli
) -> None:
    """A real session: `handoff switch` to the guest and back runs the hooks of each side
    with the VM's name and the new side in their environment; a hook sleeping past its
    timeout is killed and shown in `handoff status`; the VM runs on; stop hooks at the end."""
    out = tmp_path / "hooks.out"
    record = f"echo $HANDOFF_EVENT $HANDOFF_MODE $HANDOFF_VM >> {out}"
    profile = qmp_input_profile_file(tmp_path)
    profile.write_text(
        profile.read_text()
        + f'[[hook]]\non = "start"\nrun = ["sh", "-c", "{record}"]\n'
        + '[[hook]]\non = "guest"\nrun = ["sleep", "60"]\ntimeout = 0.5\n'
        + f'[[hook]]\non = "guest"\nrun = ["sh", "-c", "{record}"]\n'
        + f'[[hook]]\non = "host"\nrun = ["sh", "-c", "{record}"]\n'
        + f'[[hook]]\non = "stop"\nrun = ["sh", "-c", "{record}"]\n'
    )
    env = cli_env(tmp_path / "run")

    async def lines(count: int) -> list[str]:
        while not out.exists() or len(out.read_text().splitlines()) < count:  # noqa: ASYNC110
            await trio.sleep(0.05)
        return out.read_text().splitlines()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            cli = await start_cli(profile, nursery)
            await cli.wait_for("^handoff: running")
            assert await lines(1) == ["start qmpin"]
            guest = await handoff(env, "switch", "qmpin", "guest", "--json")
            assert json.loads(guest.stdout) == {"mode": "guest", "pending": None}
            assert await lines(2) == ["start qmpin", "guest guest qmpin"]
            host = await handoff(env, "switch", "qmpin", "host", "--json")
            assert json.loads(host.stdout) == {"mode": "host", "pending": None}
            assert (await lines(3))[2] == "host host qmpin"
            status = json.loads((await handoff(env, "status", "qmpin", "--json")).stdout)
            hooks = status["resources"]["hooks"]["hooks"]
            assert hooks[1] == {"on": "guest", "run": "sleep",
                                "last": "killed at its timeout (0.5 s)"}
            assert status["phase"] == "running"
            cli.process.send_signal(signal.SIGINT)
            assert await cli.process.wait() == 130
    assert out.read_text().splitlines() == [
        "start qmpin", "guest guest qmpin", "host host qmpin", "stop qmpin",
    ]
