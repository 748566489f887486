"""Runs ``[[hook]]`` programs beside the session, as a resource (see handoff/session/resources.py).

:meth:`HookRunner.fire` only queues (it never waits), so a switch or a GPU
move is never delayed by a hook. One task runs the queue in order: the
hooks of one event in the profile's order, a second event's after the
first's, so no hook ever runs twice at once. Each run gets its own process
group (``start_new_session``) and is killed, group and all, at its timeout.
Its stdout and stderr go to the log at INFO, line by line; a failure, a
timeout or a missing program is logged, shown in ``handoff status``, and
never stops the VM. ``start`` hooks are queued when the VM starts, ``stop``
hooks run at release (after QEMU has exited and the other resources put the
host back), each still bounded by its timeout.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from typing import Any

import trio

from handoff.hooks.plan import HookOutcome, gpu_event, hook_environment, hooks_for, input_event
from handoff.profile import Hook, HookEvent, InputMode, Profile
from handoff.session.resources import ControlRegistry, JsonObject, VmHandle

log = logging.getLogger(__name__)

#: Longest line of a hook's output logged as is (the rest is cut).
MAX_LINE = 4096
#: Seconds the output is still read after the hook has exited.
OUTPUT_GRACE = 1.0


class HookRunner:
    """HostResource ``hooks``: the profile's ``[[hook]]`` entries, run on events."""

    name = "hooks"

    def __init__(
        self, profile: Profile, *, environ: Mapping[str, str] | None = None,
        owned: tuple[Hook, ...] = (),
    ) -> None:
        self._profile = profile
        # handoff's own hooks ([monitor]'s ddcutil) first: the screen switches first.
        self._hooks = owned + profile.hooks
        self._environ = dict(os.environ if environ is None else environ)
        self._send, self._receive = trio.open_memory_channel[HookEvent](math.inf)
        self._queued = 0
        self._running: int | None = None
        self._last: dict[int, str] = {}
        self._released = False

    # ------------------------------------------------------------------ events

    def fire(self, event: HookEvent) -> None:
        """Queue ``event``'s hooks; returns at once (never delays the caller)."""
        if not hooks_for(self._hooks, event) or self._released:
            return
        self._queued += 1
        self._send.send_nowait(event)

    def on_input_mode(self, mode: InputMode) -> None:
        """Keyboard and mouse moved (the router's mode change)."""
        self.fire(input_event(mode))

    def on_gpu_moved(self, in_guest: bool) -> None:
        """A live GPU moved."""
        self.fire(gpu_event(in_guest))

    # ------------------------------------------------------------------ resource

    @property
    def memlock_bytes(self) -> int | None:
        return None

    async def acquire(self) -> None:
        """Nothing to change on the host."""

    def note_qemu_pid(self, pid: int) -> None:
        """Hooks keep no per-pid state."""

    async def vm_started(
        self, vm: VmHandle, nursery: trio.Nursery, control: ControlRegistry
    ) -> None:
        nursery.start_soon(self._work)
        self.fire(HookEvent.START)

    async def release(self) -> None:
        """The VM is gone and the host put back: run the ``stop`` hooks, each bounded."""
        if self._released:
            return
        self._released = True
        with trio.CancelScope(shield=True):
            for index, hook in hooks_for(self._hooks, HookEvent.STOP):
                await self._run(index, hook, HookEvent.STOP)

    def status(self) -> JsonObject:
        hooks: list[Any] = [
            {
                "on": hook.on.value,
                "run": hook.run[0],
                "last": "running" if self._running == index else self._last.get(index),
            }
            for index, hook in enumerate(self._hooks)
        ]
        return {"queued": self._queued, "hooks": hooks}

    # ------------------------------------------------------------------ running

    async def _work(self) -> None:
        async for event in self._receive:
            self._queued -= 1
            for index, hook in hooks_for(self._hooks, event):
                await self._run(index, hook, event)

    async def _run(self, index: int, hook: Hook, event: HookEvent) -> HookOutcome:
        label = f"hook {index} ({hook.on.value}: {os.path.basename(hook.run[0])})"
        env = hook_environment(self._environ, self._profile.name, event)
        self._running = index
        started = time.monotonic()
        try:
            outcome = await _run_bounded(hook, env, label)
        finally:
            self._running = None
        took = time.monotonic() - started
        text = outcome.describe(hook.timeout)
        self._last[index] = text
        if outcome.ok:
            log.info("%s: exit 0 after %.2f s", label, took)
        else:
            log.warning("%s: %s after %.2f s (the VM runs on)", label, text, took)
        return outcome


async def _run_bounded(hook: Hook, env: Mapping[str, str], label: str) -> HookOutcome:
    """Run ``hook`` (no shell), its output to the log; kill its process group at the timeout."""
    try:
        process = await trio.lowlevel.open_process(
            list(hook.run), env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        return HookOutcome(error=exc.strerror or str(exc))
    timed_out = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_log_output, process, label)
            with trio.move_on_after(hook.timeout) as scope:
                await process.wait()
            if scope.cancelled_caught:
                timed_out = True
                _kill_group(process.pid)
                await process.wait()
            # A child that left the group may hold the pipe open: read on briefly only.
            nursery.cancel_scope.deadline = trio.current_time() + OUTPUT_GRACE
    finally:
        if process.returncode is None:
            _kill_group(process.pid)
            with trio.CancelScope(shield=True):
                await process.wait()
    return HookOutcome(returncode=process.returncode, timed_out=timed_out)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _log_output(process: trio.Process, label: str) -> None:
    """The hook's stdout and stderr, line by line, at INFO (hooks get no key data)."""
    assert process.stdout is not None
    buffer = b""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        async for chunk in process.stdout:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                log.info("%s: %s", label, line[:MAX_LINE].decode(errors="replace"))
    if buffer:
        log.info("%s: %s", label, buffer[:MAX_LINE].decode(errors="replace"))
