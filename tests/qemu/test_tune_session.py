"""Tuning with the real QEMU: `handoff run` pins its threads and backs its RAM with hugepages.

This host has two CPUs and no SMT, so ``pin = "auto"`` can give one vCPU the
second CPU (the first core is the host's) and an explicit list can do the
same; a 2-vCPU pinning would leave the emulator no CPU and is refused. The
affinities are read from /proc/<qemu>/task/<tid>/status, the pool from
/sys/kernel/mm/hugepages, as the kernel reports them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.host_requirements import missing

from . import test_cli_session
from .test_cli_session import StartCli, assert_gone, cli_env, handoff

pytestmark = pytest.mark.qemu

POOL = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
start_cli = test_cli_session.start_cli  # the fixture: `handoff run` as a subprocess


@pytest.fixture(autouse=True)
def _nothing_left_behind(tmp_path: Path) -> Iterator[None]:
    """After a failed test too: a killed supervisor's QEMU stopped and its pool recovered.

    (start_cli's teardown SIGKILLs a supervisor still running; its QEMU, in
    a session of its own, would keep the pages.)
    """
    yield
    journals = sorted((tmp_path / "run" / "journal").glob("*.json"))
    for path in journals:
        pid = json.loads(path.read_text()).get("qemu_pid")
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
    if journals:
        subprocess.run([sys.executable, "-m", "handoff", "recover"], env=cli_env(tmp_path / "run"),
                       capture_output=True, timeout=120, check=False)  # fmt: skip


def pool() -> int:
    return int(POOL.read_text())


def run_dir_exists(path: Path) -> bool:
    return path.exists()


def cmdline(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]


def needs_two_cpus_and_root() -> None:
    if len(os.sched_getaffinity(0)) < 2 or os.geteuid() != 0 or not POOL.exists():
        missing("needs 2 CPUs, root and a 2M hugepage pool (the project's CI host has them)")


def tuned_profile(directory: Path, name: str, cpu: list[str], memory: str = "32M") -> Path:
    path = directory / f"{name}.toml"
    path.write_text(
        "\n".join([
            "[vm]", f'name = "{name}"', f'memory = "{memory}"', "cpus = 1", 'accel = "tcg"',
            "shutdown_timeout = 0.5",
            "[display]", 'vga = "none"', 'frontend = "none"',
            "[cpu]", *cpu,
            "[memory]", 'hugepages = "2M"',
        ]) + "\n"
    )  # fmt: skip
    return path


def _two_vcpus(profile: Path) -> None:
    profile.write_text(profile.read_text().replace("cpus = 1", "cpus = 2"))


def thread_affinities(pid: int) -> dict[str, str]:
    """Thread name (QEMU names them: debug-threads=on) + tid -> Cpus_allowed_list."""
    out: dict[str, str] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = dict(
            line.split(":\t", 1) for line in (task / "status").read_text().splitlines()
            if ":\t" in line
        )
        out[f"{fields['Name'].strip()} {task.name}"] = fields["Cpus_allowed_list"].strip()
    return out


@pytest.mark.parametrize(
    "cpu", [['pin = ["1"]', 'emulator = "0"'], ['pin = "auto"']], ids=["explicit", "auto"]
)
async def test_a_real_session_pins_every_qemu_thread_and_holds_the_pool_while_it_runs(
    tmp_path: Path, start_cli: StartCli, cpu: list[str]
) -> None:
    needs_two_cpus_and_root()
    before = pool()
    profile = tuned_profile(tmp_path, "tuned", cpu)
    env = cli_env(tmp_path / "run")
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            cli = await start_cli(profile, nursery)
            await cli.wait_for("^handoff: running")
            threads = thread_affinities(cli.qemu_pid)
            vcpus = {k: v for k, v in threads.items() if k.startswith("CPU ")}
            others = {k: v for k, v in threads.items() if not k.startswith("CPU ")}
            assert list(vcpus.values()) == ["1"], threads
            assert others, threads
            assert set(others.values()) == {"0"}, threads
            assert pool() >= before + 16  # 32 MiB in 2 MiB pages
            status = json.loads((await handoff(env, "status", "tuned", "--json")).stdout)
            pinned = status["resources"]["tune"]["threads"]
            assert {t["role"]: t["cpus"] for t in pinned} == {"vCPU 0": "1", "emulator": "0"}
            assert {str(t["tid"]) for t in pinned} == {k.split()[-1] for k in threads}
            argv = await handoff(env, "argv", str(profile))
            printed = shlex.split(argv.stdout.decode())
            assert [a for a in cmdline(cli.qemu_pid) if "fd=" not in a] == [
                a for a in printed if "fd=" not in a
            ]
            cli.process.send_signal(signal.SIGINT)
            assert await cli.process.wait() == 130
    text = cli.text()
    assert "pinned: vCPU 0 (thread" in text
    assert "hugepages: 16 x 2M reserved" in text
    assert pool() == before
    assert_gone(cli, tmp_path / "run" / "tuned")


async def test_a_pinning_this_host_cannot_give_is_refused_and_changes_nothing(
    tmp_path: Path, start_cli: StartCli
) -> None:
    needs_two_cpus_and_root()
    before = pool()
    profile = tuned_profile(tmp_path, "refused", ['pin = ["0", "1"]'])
    _two_vcpus(profile)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            cli = await start_cli(profile, nursery)
            assert await cli.process.wait() == 2
    assert b"every online CPU (0-1) is pinned to a vCPU" in cli.stderr
    assert not any("QEMU started" in line for line in cli.lines)
    assert pool() == before
    assert not run_dir_exists(tmp_path / "run" / "refused")
