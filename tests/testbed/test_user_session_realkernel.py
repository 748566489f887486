"""`handoff run` with ``vm.user = "nobody"``, the GPU lookalike and each input backend.

Inside the testbed VM: QEMU runs as nobody (not root: root skips vfio's
memlock accounting and every permission check, so a root QEMU proves
nothing here). While the session runs, for input backends none, qmp and
virtio alike: QEMU's uids are nobody's, it holds /dev/vfio/N (an fd in
/proc/<qemu>/fd resolves to it) which belongs to nobody, and its
RLIMIT_MEMLOCK covers guest RAM. With ``qmp`` QEMU created its input
monitor in its own socket directory (``<run>/qemu/<name>/``); with ``virtio`` it holds the
proxies' event nodes, which belong to nobody. Afterwards the devices are
back on their drivers, /dev/vfio/N and the proxy nodes are gone with their
devices, and the run directory is removed. One short session per backend.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoff import journal as jr
from handoff.base.host import HostPaths
from handoff.input.devices import PROXY_NAME_PREFIX
from handoff.pci.sysfs import read_device
from handoff.session.rundir import qemu_socket_dir
from tests.lines import wait_for_line
from tests.testbed import guest
from tests.testbed.devices import GpuLookalike

pytestmark = pytest.mark.realkernel

CHECKOUT = Path(__file__).resolve().parents[2]
USER = "nobody"
MEMORY_MIB = 64
WAIT = 240.0  # seconds for a nested TCG QEMU to come up or a session to end
BACKENDS = ("none", "qmp", "virtio")
Drivers = dict[str, tuple[str | None, str | None]]


@pytest.fixture
def run_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A run root QEMU's user can pass through (pytest's tmp_path is root's 0700)."""
    run = Path("/run") / f"handoff-user-{request.node.callspec.id}"
    shutil.rmtree(run, ignore_errors=True)
    yield run
    guest.kill_recorded_qemus(run)  # whatever happened: no QEMU left
    handoff(run, "recover")
    shutil.rmtree(run, ignore_errors=True)


def profile(directory: Path, name: str, gpu: GpuLookalike, backend: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(
        f"""
[vm]
name = "{name}"
memory = "{MEMORY_MIB}M"
cpus = 1
accel = "tcg"
shutdown_timeout = 1
user = "{USER}"

[display]
vga = "none"
frontend = "none"

[input]
backend = "{backend}"
devices = ["name:no such keyboard in the testbed"]

[[passthrough]]
address = "{gpu.vga.short}"
multifunction = true

[[passthrough]]
address = "{gpu.audio.short}"
"""
    )
    return path


def handoff(run: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "handoff", *argv],
        env={**os.environ, "HANDOFF_RUN_DIR": str(run)},
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        check=False,
        timeout=WAIT,
    )


def drivers(gpu: GpuLookalike) -> Drivers:
    result: Drivers = {}
    for address in gpu.functions:
        device = read_device(HostPaths(), address)
        result[address.short] = (device.driver, device.driver_override)
    return result


def read_until(session: subprocess.Popen[str], text: str) -> str:
    """The supervisor's output up to a line containing ``text`` (bounded by WAIT)."""
    return "".join(wait_for_line(session, text, wait=WAIT))


def open_files(pid: int) -> set[str]:
    fd_dir = Path(f"/proc/{pid}/fd")
    return {os.path.realpath(fd_dir / fd) for fd in os.listdir(fd_dir)}


def uids(pid: int) -> set[int]:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^Uid:\s+(.*)$", status, re.MULTILINE)
    assert match is not None
    return {int(uid) for uid in match[1].split()}


def memlock_soft(pid: int) -> float:
    limits = Path(f"/proc/{pid}/limits").read_text()
    match = re.search(r"^Max locked memory\s+(\S+)", limits, re.MULTILINE)
    assert match is not None
    return float("inf") if match[1] == "unlimited" else int(match[1])


def event_name(node: str) -> str:
    return Path(f"/sys/class/input/{Path(node).name}/device/name").read_text().strip()


@pytest.mark.usefixtures("vfio_pci")
@pytest.mark.parametrize("backend", BACKENDS)
def test_qemu_runs_as_the_user_with_passthrough_and_each_input_backend(
    tmp_path: Path, run_dir: Path, gpu_lookalike: GpuLookalike, backend: str
) -> None:
    nobody = pwd.getpwnam(USER).pw_uid
    name = f"user{backend}"
    before = drivers(gpu_lookalike)
    vfio_node = Path(f"/dev/vfio/{gpu_lookalike.group}")
    session = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "handoff",
            "run",
            str(profile(tmp_path, name, gpu_lookalike, backend)),
        ],
        env={**os.environ, "HANDOFF_RUN_DIR": str(run_dir)},
        cwd=CHECKOUT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proxies: dict[str, int] = {}
    try:
        out = read_until(session, "running (stop")
        match = re.search(r"QEMU started, pid (\d+)", out)
        assert match is not None, out
        qemu = int(match[1])

        assert uids(qemu) == {nobody}, "QEMU runs as the profile's user"
        held = open_files(qemu)
        assert str(vfio_node) in held, f"QEMU holds {vfio_node}: {sorted(held)}"
        assert vfio_node.stat().st_uid == nobody
        assert memlock_soft(qemu) >= MEMORY_MIB << 20, "QEMU's memlock covers guest RAM"

        if backend == "qmp":
            monitor = qemu_socket_dir(HostPaths(run=run_dir), name) / "input.qmp"
            assert monitor.is_socket()
            assert monitor.stat().st_uid == nobody
        events = sorted(path for path in held if path.startswith("/dev/input/event"))
        if backend == "virtio":
            assert len(events) == 2, f"QEMU holds both proxies: {sorted(held)}"
            for node in events:
                assert event_name(node).startswith(PROXY_NAME_PREFIX)
                info = os.stat(node)
                assert info.st_uid == nobody, f"{node} belongs to QEMU's user"
                proxies[node] = info.st_rdev
        else:
            assert events == []
    finally:
        session.send_signal(signal.SIGINT)
        out, _ = session.communicate(timeout=WAIT)
    assert session.returncode == 130, out
    assert "released gpu" in out
    assert drivers(gpu_lookalike) == before, "the GPU lookalike is back on its drivers"
    assert not vfio_node.exists() or vfio_node.stat().st_uid != nobody
    for node, rdev in proxies.items():  # the proxies are destroyed with their nodes
        assert not os.path.exists(node) or os.stat(node).st_rdev != rdev, node
    assert not (run_dir / name).exists(), "the run directory is removed"
    assert jr.list_journals(HostPaths(run=run_dir)) == []
