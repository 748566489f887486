"""`handoff run` starts QEMU before it loads trio, and still cleans up on every exit path.

A plan with no resource (these demo-like profiles) is started early
(:mod:`handoff.session.early`): the real `handoff` command runs in a
subprocess under an audit hook that records when QEMU is spawned and when
trio and the supervisor are imported, and injects a SIGTERM or an import
error in the window between the two. A plan with a resource starts as
before: resources first, QEMU after.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest

from handoff.base.host import HostPaths
from handoff.profile import load_profile
from handoff.session.early import prepare
from handoff.session.supervisor import Session

from .conftest import pid_gone, write_profile

pytestmark = pytest.mark.qemu

REPO = Path(__file__).resolve().parents[2]
#: Generous bound for a TCG QEMU to greet and for the command to end (busy CI hosts).
BOUND = 120.0

#: Runs `handoff run PROFILE` with an audit hook; ACTION is "order", "sigterm" or "error".
DRIVER = r"""
import json, signal, sys

action, profile, name = sys.argv[1:4]
order = []


def hook(event, args):
    if event == "subprocess.Popen" and any(f"guest={name}" in str(a) for a in args[1] or ()):
        order.append("spawn qemu")
    elif event == "import" and args[0] in ("trio", "handoff.session.supervisor"):
        order.append("import " + args[0])
        if action == "sigterm" and args[0] == "trio":
            signal.raise_signal(signal.SIGTERM)  # between the early spawn and the session
        if action == "error" and args[0] == "handoff.session.supervisor":
            raise ImportError("injected: the supervisor failed to load")


sys.addaudithook(hook)
from handoff.cli.main import main

try:
    status = main(["run", profile])
finally:
    print("ORDER " + json.dumps(order), file=sys.stderr, flush=True)
sys.exit(status)
"""


def run_driver(action: str, tmp_path: Path, name: str) -> subprocess.Popen[str]:
    profile = write_profile(tmp_path, name)
    env = {**os.environ, "HANDOFF_RUN_DIR": str(tmp_path / "run"), "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, action, str(profile), name],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )


def read_until(process: subprocess.Popen[str], text: str) -> list[str]:
    """stdout lines up to the first containing ``text`` (bounded by :data:`BOUND`)."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + BOUND
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not any(text in line for line in lines):
            assert selector.select(max(0.0, deadline - time.monotonic())), (text, lines)
            line = process.stdout.readline()
            assert line, f"the command ended before {text!r}: {lines}"
            lines.append(line.rstrip("\n"))
    return lines


def order_of(stderr: str) -> list[str]:
    line = next(x for x in stderr.splitlines() if x.startswith("ORDER "))
    order: list[str] = json.loads(line.removeprefix("ORDER "))
    return order


def qemu_alive(name: str) -> list[int]:
    """Pids of processes whose command line names guest ``name``."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"guest={name},".encode() in cmdline and not pid_gone(int(entry.name)):
            alive.append(int(entry.name))
    return alive


def test_qemu_is_spawned_before_trio_is_imported_and_the_session_adopts_it(
    tmp_path: Path,
) -> None:
    name = f"early-order-{os.getpid()}"
    process = run_driver("order", tmp_path, name)
    lines = read_until(process, "QMP connected")
    started = next(line for line in lines if "QEMU started, pid" in line)
    stop = subprocess.run(
        [sys.executable, "-m", "handoff", "stop", "--force", name],
        env={**os.environ, "HANDOFF_RUN_DIR": str(tmp_path / "run"), "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=BOUND, check=False, cwd=REPO,
    )
    assert stop.returncode == 0, stop.stderr
    _, stderr = process.communicate(timeout=BOUND)
    assert process.returncode == 0, stderr
    assert order_of(stderr) == ["spawn qemu", "import trio", "import handoff.session.supervisor"]
    pid = int(re.search(r"pid (\d+)", started)[1])  # type: ignore[index]
    assert pid_gone(pid)
    assert not (tmp_path / "run" / name).exists()


def test_a_sigterm_while_the_supervisor_loads_stops_before_the_guest_runs(
    tmp_path: Path,
) -> None:
    name = f"early-term-{os.getpid()}"
    process = run_driver("sigterm", tmp_path, name)
    stdout, stderr = process.communicate(timeout=BOUND)
    assert order_of(stderr)[:2] == ["spawn qemu", "import trio"]
    assert process.returncode == 128 + 15, (stdout, stderr)
    assert "SIGTERM: stopping" in stdout
    assert "before the VM ran" in stdout
    assert "RESUME" not in stdout  # paused (-S) until the end: the guest never ran
    pid = int(re.search(r"QEMU started, pid (\d+)", stdout)[1])  # type: ignore[index]
    assert pid_gone(pid)
    assert not (tmp_path / "run" / name).exists()


def test_an_error_before_the_session_adopts_qemu_kills_it_and_removes_the_run_directory(
    tmp_path: Path,
) -> None:
    name = f"early-error-{os.getpid()}"
    process = run_driver("error", tmp_path, name)
    stdout, stderr = process.communicate(timeout=BOUND)
    assert order_of(stderr) == ["spawn qemu", "import trio", "import handoff.session.supervisor"]
    assert "injected: the supervisor failed to load" in stderr
    assert process.returncode != 0
    assert "QEMU started" not in stdout  # no session ever reported it
    assert qemu_alive(name) == []
    assert not (tmp_path / "run" / name).exists()


def test_a_plan_with_a_resource_is_not_started_early(tmp_path: Path) -> None:
    profile_path = write_profile(tmp_path, "early-hook")
    with profile_path.open("a") as f:
        f.write('\n[[hook]]\non = "start"\nrun = ["true"]\n')
    paths = HostPaths(run=tmp_path / "run")
    prepared = prepare(load_profile(profile_path), paths)
    try:
        assert [r.name for r in prepared.resources] != []
        assert prepared.qemu is None  # the session acquires the hooks, then spawns QEMU
        assert not paths.session_dir("early-hook").exists()
    finally:
        prepared.close()


async def test_an_error_after_the_session_adopted_qemu_but_before_supervising_it_kills_it(
    tmp_path: Path,
) -> None:
    profile = load_profile(write_profile(tmp_path, "early-adopted"))
    paths = HostPaths(run=tmp_path / "run")
    prepared = prepare(profile, paths)
    assert prepared.qemu is not None
    pid = prepared.qemu.popen.pid

    def report(line: str) -> None:
        if line.startswith("preflight ok"):  # after the adoption, before any task
            raise RuntimeError("injected: reporting failed")

    session = Session(profile, paths, prepared.resources, report=report,
                      handle_signals=False, prepared=prepared)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            await session.run()
        assert pid_gone(pid)  # killed and reaped by the session, not by close()
        assert not paths.session_dir("early-adopted").exists()
    finally:
        prepared.close()
