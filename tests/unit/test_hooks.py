"""``[[hook]]``: the profile section, what a hook is told, and real programs run beside the VM.

The runner starts real processes (sh, sleep) on trio's real clock; nothing
here asserts a duration: ordering is read from what the hooks wrote.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from handoff.base.errors import ProfileError
from handoff.checks.profile_files import check_profile_on_host
from handoff.hooks.plan import HookOutcome, hook_environment, hooks_for
from handoff.hooks.runner import HookRunner
from handoff.profile import Hook, HookEvent, InputMode, parse_profile
from handoff.profile.hooks import DEFAULT_TIMEOUT

BASE = '[vm]\nname = "w"\nmemory = "1G"\n'


def hook_profile(tmp_path: Path, hooks: str) -> object:
    return parse_profile(BASE + hooks, tmp_path / "w.toml")


# ------------------------------------------------------------------ the profile


def test_hooks_are_read_in_file_order_with_the_default_timeout(tmp_path: Path) -> None:
    profile = parse_profile(
        BASE + '[[hook]]\non = "guest"\nrun = ["notify-send", "w", "guest"]\n'
        '[[hook]]\non = "gpu-host"\nrun = ["ddcutil", "setvcp", "60", "0x0f"]\ntimeout = 2\n',
        tmp_path / "w.toml",
    )
    assert profile.hooks == (
        Hook(HookEvent.GUEST, ("notify-send", "w", "guest"), DEFAULT_TIMEOUT),
        Hook(HookEvent.GPU_HOST, ("ddcutil", "setvcp", "60", "0x0f"), 2.0),
    )
    assert Hook(HookEvent.GUEST, ("x",)).timeout == DEFAULT_TIMEOUT


@pytest.mark.parametrize(
    ("hook", "message", "fix"),
    [
        ('on = "gest"\nrun = ["true"]', r'hook\[0\]\.on: found the string "gest"',
         'did you mean "guest"'),
        ('run = ["true"]', r"hook\[0\]\.on: is missing", 'on = "guest"'),
        ('on = "host"\nrun = []', r"hook\[0\]\.run: is missing or empty", '"sh", "-c"'),
        ('on = "host"\nrun = "notify-send hi"', r"expected an array of the program", "run = ["),
        ('on = "host"\nrun = ["true"]\ntimeout = 0', r"expected seconds from 0.1 to 300",
         "timeout = 5"),
        ('on = "host"\nrun = ["true"]\ntimout = 3', r'unknown key "timout"', 'did you mean'),
    ],
)  # fmt: skip
def test_bad_hooks_are_refused_with_the_fix(
    tmp_path: Path, hook: str, message: str, fix: str
) -> None:
    with pytest.raises(ProfileError, match=message) as caught:
        parse_profile(BASE + f"[[hook]]\n{hook}\n", tmp_path / "w.toml")
    assert fix in (caught.value.fix or "")


def test_a_hook_whose_program_does_not_exist_is_refused_before_the_run(tmp_path: Path) -> None:
    for program, where in (("no-such-program-here", "not on PATH"),
                           ("/nonexistent/notify", "not an executable file")):
        profile = parse_profile(
            BASE + f'[[hook]]\non = "guest"\nrun = ["{program}"]\n', tmp_path / "w.toml"
        )
        with pytest.raises(ProfileError, match=rf"hook\[0\]\.run\[0\].*{where}") as caught:
            check_profile_on_host(profile)
        assert "full path" in (caught.value.fix or "")
    check_profile_on_host(
        parse_profile(BASE + '[[hook]]\non = "guest"\nrun = ["true"]\n', tmp_path / "w.toml")
    )


# ------------------------------------------------------------------ what a hook is told


def test_a_hook_is_told_the_vm_the_event_and_the_new_side() -> None:
    base = {"PATH": "/bin", "HANDOFF_MODE": "stale"}
    assert hook_environment(base, "win10", HookEvent.GUEST) == {
        "PATH": "/bin", "HANDOFF_VM": "win10", "HANDOFF_EVENT": "guest", "HANDOFF_MODE": "guest",
    }
    assert hook_environment(base, "win10", HookEvent.GPU_HOST)["HANDOFF_MODE"] == "host"
    assert "HANDOFF_MODE" not in hook_environment(base, "win10", HookEvent.STOP)
    hooks = (Hook(HookEvent.GUEST, ("a",)), Hook(HookEvent.HOST, ("b",)),
             Hook(HookEvent.GUEST, ("c",)))
    assert [i for i, _ in hooks_for(hooks, HookEvent.GUEST)] == [0, 2]
    assert HookOutcome(timed_out=True).describe(5) == "killed at its timeout (5 s)"
    assert HookOutcome(returncode=3).describe(5) == "exit 3"


# ------------------------------------------------------------------ real programs


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        return ") Z " not in Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False


class Vm:
    pid = 0

    async def execute(self, command: str, arguments: object = None) -> object:
        return None


class Control:
    def register(self, command: str, handler: object) -> None:
        """Hooks register no command."""


def writer(out: Path, tag: str, on: str = "guest", extra: str = "", timeout: float = 30) -> str:
    line = f"echo {tag} $HANDOFF_EVENT $HANDOFF_MODE $HANDOFF_VM >> {out}"
    return f'[[hook]]\non = "{on}"\nrun = ["sh", "-c", "{extra}{line}"]\ntimeout = {timeout}\n'


def written(out: Path) -> list[str]:
    return out.read_text().splitlines() if out.exists() else []


async def wait_lines(out: Path, count: int) -> list[str]:
    with trio.fail_after(120):
        while len(written(out)) < count:  # noqa: ASYNC110 (other processes write it)
            await trio.sleep(0.02)
    return written(out)


async def test_hooks_of_one_event_run_in_order_and_a_second_switch_queues(tmp_path: Path) -> None:
    out = tmp_path / "out"
    profile = parse_profile(
        BASE + writer(out, "first", extra="sleep 0.3; ") + writer(out, "second")
        + writer(out, "back", on="host") + writer(out, "up", on="start")
        + writer(out, "down", on="stop"),
        tmp_path / "w.toml",
    )
    runner = HookRunner(profile, environ={"PATH": "/usr/bin:/bin"})
    async with trio.open_nursery() as nursery:
        await runner.vm_started(Vm(), nursery, Control())
        runner.on_input_mode(InputMode.GUEST)  # returns at once: only queued
        runner.on_input_mode(InputMode.HOST)
        runner.on_input_mode(InputMode.GUEST)  # while the first runs: queued, never overlapping
        assert runner.status()["queued"] >= 2
        lines = await wait_lines(out, 6)
        nursery.cancel_scope.cancel()
    await runner.release()
    assert out.read_text().splitlines() == [
        "up start w",
        "first guest guest w",
        "second guest guest w",
        "back host host w",
        "first guest guest w",
        "second guest guest w",
        "down stop w",
    ]
    assert lines[:6] == out.read_text().splitlines()[:6]
    assert [h["last"] for h in runner.status()["hooks"]] == ["exit 0"] * 5


async def test_a_hook_past_its_timeout_is_killed_with_its_children_and_the_next_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, child = tmp_path / "out", tmp_path / "child.pid"
    profile = parse_profile(
        BASE
        + f'[[hook]]\non = "gpu-guest"\nrun = ["sh", "-c", "sleep 60 & echo $! > {child}; '
        'echo starting; wait"]\ntimeout = 3\n'
        + '[[hook]]\non = "gpu-guest"\nrun = ["sh", "-c", "echo oops >&2; exit 3"]\n'
        + '[[hook]]\non = "gpu-guest"\nrun = ["/nonexistent-hook"]\n'
        + writer(out, "after", on="gpu-host"),
        tmp_path / "w.toml",
    )
    runner = HookRunner(profile, environ={"PATH": "/usr/bin:/bin"})
    caplog.set_level(logging.INFO, logger="handoff.hooks")
    async with trio.open_nursery() as nursery:
        await runner.vm_started(Vm(), nursery, Control())
        runner.on_gpu_moved(True)
        runner.on_gpu_moved(False)
        assert await wait_lines(out, 1) == ["after gpu-host host w"]
        nursery.cancel_scope.cancel()
    await runner.release()
    pid = int(child.read_text())
    with trio.fail_after(60):  # SIGKILLed with its group; gone (or a zombie) soon after
        while alive(pid):  # noqa: ASYNC110 (the kernel's state)
            await trio.sleep(0.02)
    last = [h["last"] for h in runner.status()["hooks"]]
    assert last[0] == "killed at its timeout (3 s)"
    assert last[1] == "exit 3"
    assert last[2].startswith("could not start")
    assert last[3] == "exit 0"
    text = caplog.text
    assert "hook 0 (gpu-guest: sh): starting" in text  # output at INFO
    assert "hook 1 (gpu-guest: sh): oops" in text
    assert "killed at its timeout (3 s)" in text
    assert "the VM runs on" in text


async def test_stop_hooks_run_at_release_bounded_by_their_timeout(tmp_path: Path) -> None:
    out = tmp_path / "out"
    profile = parse_profile(
        BASE + '[[hook]]\non = "stop"\nrun = ["sleep", "60"]\ntimeout = 0.3\n'
        + writer(out, "down", on="stop"),
        tmp_path / "w.toml",
    )
    runner = HookRunner(profile, environ={"PATH": "/usr/bin:/bin"})
    with trio.CancelScope() as scope:
        scope.cancel()  # release runs shielded: a cancelled session still runs them
        await runner.release()
    assert out.read_text().splitlines() == ["down stop w"]
    assert runner.status()["hooks"][0]["last"] == "killed at its timeout (0.3 s)"
    await runner.release()  # idempotent
    assert out.read_text().splitlines() == ["down stop w"]
