"""Each rung of the shutdown ladder acts, in order, on a real QEMU that ignores the rungs above it.

The real qemu-system-x86_64 runs behind tests/qemu/ladder_wrapper.py, the
session's ``binary``: a QMP filter that swallows ``system_powerdown`` and
``quit`` and either passes SIGTERM on to QEMU (``term``) or ignores it
(``nothing``). Its journal shows which rungs reached "QEMU", in which order;
QEMU's own SHUTDOWN event shows that it acted on SIGTERM.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from handoff.base.host import HostPaths
from handoff.control import server as control
from handoff.profile import load_profile
from handoff.session.end import ExitStatus
from handoff.session.ladder import LadderTimeouts
from handoff.session.supervisor import Outcome, Session

from .conftest import write_profile
from .test_session import Lines

pytestmark = pytest.mark.qemu

WRAPPER = Path(__file__).with_name("ladder_wrapper.py")

#: The ladder's status lines, in the order the rungs act.
RUNG_LINES = (
    "asking the guest to power off",
    "the guest did not power off",
    "asking QEMU to quit",
    "sending QEMU SIGTERM",
    "sending QEMU SIGKILL",
)


def wrapped_qemu(directory: Path, mode: str) -> tuple[Path, Path]:
    """(an executable to use as the session's binary, its journal) for ``mode``."""
    journal = directory / f"{mode}.journal"
    binary = directory / f"qemu-{mode}"
    command = shlex.join(
        [sys.executable, str(WRAPPER), "--mode", mode, "--journal", str(journal), "--"]
    )
    binary.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    binary.chmod(0o755)
    return binary, journal


def journal_of(path: Path) -> tuple[int, list[str]]:
    """(the real QEMU's pid, the rungs that reached the wrapper in order)."""
    first, *rest = path.read_text().splitlines()
    assert first.startswith("qemu pid ")
    return int(first.removeprefix("qemu pid ")), rest


def ended(pid: int) -> bool:
    """True when ``pid`` is gone or a zombie (an orphan waiting for a reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def wait_ended(pid: int, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while not ended(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def supervised_pid(lines: Lines) -> int:
    """The pid the session started (the wrapper's): "QEMU started, pid N (log: ...)"."""
    line = next(x for x in lines.lines if x.startswith("QEMU started, pid "))
    return int(line.removeprefix("QEMU started, pid ").split()[0])


def rung_lines(lines: Lines) -> list[str]:
    """The ladder's lines the session printed, each cut to its RUNG_LINES prefix."""
    return [rung for line in lines.lines for rung in RUNG_LINES if line.startswith(rung)]


@pytest.fixture
def started_pids() -> Iterator[list[int]]:
    """Pids a test started; SIGKILLed at teardown if still there (a broken ladder)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not ended(pid):
            os.kill(pid, signal.SIGKILL)


async def run_and_stop(
    tmp_path: Path, mode: str, timeouts: LadderTimeouts, pids: list[int], *, force: bool = False
) -> tuple[Outcome, Lines, Path]:
    """A session on the wrapped QEMU, stopped through the control socket once it runs."""
    binary, journal = wrapped_qemu(tmp_path, mode)
    profile = load_profile(write_profile(tmp_path, mode, shutdown_timeout=timeouts.powerdown))
    paths = HostPaths(run=tmp_path / "run")
    lines = Lines()
    session = Session(profile, paths, [], binary=str(binary), report=lines,
                      timeouts=timeouts, handle_signals=False)
    outcome: list[Outcome] = []

    async def runner() -> None:
        outcome.append(await session.run())

    sock = paths.session_dir(profile.name) / "control.sock"
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner)
            await lines.wait_for("^running")
            pids.append(supervised_pid(lines))
            pids.append(journal_of(journal)[0])
            message = {"command": "stop", "force": force}
            await trio.to_thread.run_sync(lambda: control.request(sock, message))
    return outcome[0], lines, journal


@pytest.fixture(autouse=True)
def _own_probe_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wrapper's capability probe is cached next to it, not in the host's cache."""
    monkeypatch.setenv("HANDOFF_CACHE_DIR", str(tmp_path / "cache"))


async def test_a_qemu_that_ignores_powerdown_and_quit_is_ended_by_sigterm(
    tmp_path: Path, started_pids: list[int]
) -> None:
    # The SIGTERM bound is far above what QEMU needs: without SIGTERM acting,
    # the ladder would reach SIGKILL and the outcome would be 1.
    timeouts = LadderTimeouts(powerdown=0.5, quit=0.5, sigterm=20, sigkill=20)
    outcome, lines, journal = await run_and_stop(tmp_path, "term", timeouts, started_pids)
    qemu_pid, rungs = journal_of(journal)
    assert rungs == ["system_powerdown", "quit", "SIGTERM"]
    assert rung_lines(lines) == list(RUNG_LINES[:4])
    assert "sending QEMU SIGTERM (up to 20 s)" in lines.lines
    # The real QEMU got the signal and shut down on it.
    assert "SHUTDOWN by the host (reason: host-signal)" in lines.lines
    assert outcome == Outcome(
        ExitStatus.OK, "stopped on request; QEMU exited with status 0", 0, ""
    )
    assert wait_ended(qemu_pid)
    assert not (tmp_path / "run" / "term").exists()


async def test_a_qemu_that_honours_nothing_gets_sigterm_then_sigkill(
    tmp_path: Path, started_pids: list[int]
) -> None:
    timeouts = LadderTimeouts(powerdown=0.3, quit=0.3, sigterm=0.5, sigkill=20)
    outcome, lines, journal = await run_and_stop(tmp_path, "nothing", timeouts, started_pids)
    qemu_pid, rungs = journal_of(journal)
    assert rungs == ["system_powerdown", "quit", "SIGTERM"]
    assert rung_lines(lines) == list(RUNG_LINES)
    assert "sending QEMU SIGKILL (up to 20 s)" in lines.lines
    assert outcome.status == ExitStatus.ABNORMAL
    assert outcome.qemu_returncode == -signal.SIGKILL
    assert outcome.summary == (
        "QEMU was killed by SIGKILL: it ignored quit and SIGTERM and had to be killed"
    )
    assert wait_ended(qemu_pid), "the real QEMU outlived its wrapper's SIGKILL"
    assert not (tmp_path / "run" / "nothing").exists()


async def test_a_forced_stop_skips_the_guest_and_still_climbs_quit_then_sigterm(
    tmp_path: Path, started_pids: list[int]
) -> None:
    timeouts = LadderTimeouts(powerdown=600, quit=0.5, sigterm=20, sigkill=20)
    outcome, lines, journal = await run_and_stop(
        tmp_path, "term", timeouts, started_pids, force=True
    )
    _, rungs = journal_of(journal)
    assert rungs == ["quit", "SIGTERM"]
    assert rung_lines(lines) == ["asking QEMU to quit", "sending QEMU SIGTERM"]
    assert outcome.status == ExitStatus.OK
    assert outcome.qemu_returncode == 0
