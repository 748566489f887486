"""On a real kernel, the QEMU `handoff run` starts is the command `handoff argv` prints.

Two profiles whose argv depends on host resources: one passing the GPU
lookalike (06.0 + 06.1) through, one with the virtio input backend (uinput
proxies, which QEMU opens through the plan's links in its socket
directory). For each, a real `handoff run` subprocess is started and the
nested QEMU's /proc/<pid>/cmdline is compared with `handoff argv`'s output;
only the QMP socketpair's fd number may differ.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from handoff.base.host import HostPaths
from handoff.input.devices import PROXY_NAME_PREFIX
from handoff.session.plan import required_memlock
from tests.testbed.devices import GpuLookalike

pytestmark = pytest.mark.realkernel

CHECKOUT = Path(__file__).resolve().parents[2]
WAIT = 180.0  # seconds for a nested TCG QEMU to come up or a session to end
_QMP_FD = re.compile(r"^socket,id=qmp,fd=\d+$")


def without_fd_numbers(argv: list[str]) -> list[str]:
    return ["socket,id=qmp,fd=N" if _QMP_FD.match(arg) else arg for arg in argv]


def write_profile(tmp_path: Path, name: str, tables: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'[vm]\nname = "{name}"\nmemory = "64M"\ncpus = 1\naccel = "tcg"\n'
        'shutdown_timeout = 1\n[display]\nvga = "none"\nfrontend = "none"\n' + tables
    )
    return path


def env(run: Path) -> dict[str, str]:
    return {**os.environ, "HANDOFF_RUN_DIR": str(run)}


def printed_argv(run: Path, profile: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "handoff", "argv", str(profile)], env=env(run), cwd=CHECKOUT,
        capture_output=True, text=True, check=False, timeout=WAIT,
    )
    assert done.returncode == 0, done.stderr
    return shlex.split(done.stdout)


class Running:
    """A `handoff run` subprocess, read line by line up to a wanted line."""

    def __init__(self, run: Path, profile: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "handoff", "run", str(profile)], env=env(run), cwd=CHECKOUT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []

    def wait_for(self, text: str) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise AssertionError(f"the session ended before {text!r}:\n" + self.text())
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} within {WAIT:g} s:\n" + self.text())

    @property
    def qemu_pid(self) -> int:
        match = re.search(r"QEMU started, pid (\d+)", self.text())
        assert match is not None, self.text()
        return int(match[1])

    def text(self) -> str:
        return "".join(self.lines)

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        out, _ = self.process.communicate(timeout=WAIT)
        return self.process.returncode, self.text() + out


def proc_cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")


def open_files(pid: int) -> set[str]:
    found: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found.add(os.readlink(fd))
        except FileNotFoundError:
            continue
    return found


def locked_memory_soft_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max locked memory"):
            return line.split()[3]
    raise AssertionError(f"/proc/{pid}/limits has no memlock line")


@pytest.mark.usefixtures("testbed_gpu", "vfio_pci")
def test_a_passthrough_run_starts_exactly_the_printed_argv(
    tmp_path: Path, gpu_lookalike: GpuLookalike
) -> None:
    run = tmp_path / "run"
    vga, audio = gpu_lookalike.vga, gpu_lookalike.audio
    profile = write_profile(
        tmp_path, "argvgpu",
        f'[[passthrough]]\naddress = "{vga.short}"\nmultifunction = true\n'
        f'[[passthrough]]\naddress = "{audio.short}"\n',
    )
    argv = printed_argv(run, profile)
    assert f"vfio-pci,host={vga},id=hostdev-{str(vga).replace(':', '-').replace('.', '-')}" \
        in " ".join(argv)
    session = Running(run, profile)
    try:
        session.wait_for("handoff: running")
        pid = session.qemu_pid
        ran = proc_cmdline(pid)
        soft = locked_memory_soft_limit(pid)
    finally:
        code, out = session.stop()
    assert without_fd_numbers(ran) == without_fd_numbers(argv)
    from handoff.profile import load_profile

    needed = required_memlock(load_profile(profile))
    assert needed is not None
    assert soft == "unlimited" or int(soft) >= needed, f"QEMU's memlock {soft} < {needed}"
    assert code == 130, out
    assert "released gpu" in out


@pytest.mark.usefixtures("testbed_uinput")
def test_a_virtio_input_run_starts_the_printed_argv_and_qemu_opens_the_links(
    tmp_path: Path, udev: Any
) -> None:
    run = tmp_path / "run"
    profile = write_profile(
        tmp_path, "argvvirtio",
        '[input]\nbackend = "virtio"\ndevices = ["name:no such keyboard in the testbed"]\n',
    )
    argv = printed_argv(run, profile)
    qemu_dir = run / "qemu" / "argvvirtio"
    keyboard, mouse = qemu_dir / "keyboard.evdev", qemu_dir / "mouse.evdev"
    assert f"virtio-input-host-pci,id=handoff-keyboard,evdev={keyboard}" in argv
    assert f"virtio-input-host-pci,id=handoff-mouse,evdev={mouse}" in argv
    session = Running(run, profile)
    try:
        session.wait_for("handoff: running")
        pid = session.qemu_pid
        ran = proc_cmdline(pid)
        nodes = [os.readlink(keyboard), os.readlink(mouse)]
        held = open_files(pid)
        names = [
            Path(f"/sys/class/input/{Path(node).name}/device/name").read_text().strip()
            for node in nodes
        ]
    finally:
        code, out = session.stop()
    assert without_fd_numbers(ran) == without_fd_numbers(argv)
    assert all(re.fullmatch(r"/dev/input/event\d+", node) for node in nodes), nodes
    assert set(nodes) <= held, f"QEMU holds {sorted(held)}, not the proxies {nodes}"
    assert names == [f"{PROXY_NAME_PREFIX}{role} (argvvirtio)" for role in ("keyboard", "mouse")]
    assert code == 130, out
    assert not keyboard.is_symlink(), "the links go with the session"
    assert not qemu_dir.exists()
    assert not HostPaths(run=run).session_dir("argvvirtio").exists()
