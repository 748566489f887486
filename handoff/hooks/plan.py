"""Which hooks an event runs, with what environment, and what a run's end means. Pure.

A hook learns the VM's name (``HANDOFF_VM``), the event (``HANDOFF_EVENT``,
its ``on`` value) and, for a switch or a GPU move, the side that now has the
keyboard and mouse or the GPU (``HANDOFF_MODE``: ``guest`` or ``host``).
Never anything typed: hooks get no key data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from handoff.profile.model import Hook, HookEvent, InputMode

#: The side each moving event leaves things on (start and stop have none).
SIDE: Mapping[HookEvent, InputMode] = {
    HookEvent.GUEST: InputMode.GUEST,
    HookEvent.HOST: InputMode.HOST,
    HookEvent.GPU_GUEST: InputMode.GUEST,
    HookEvent.GPU_HOST: InputMode.HOST,
}


def input_event(mode: InputMode) -> HookEvent:
    """Keyboard and mouse went to ``mode``."""
    return HookEvent.GUEST if mode is InputMode.GUEST else HookEvent.HOST


def gpu_event(in_guest: bool) -> HookEvent:
    """The live GPU went to the guest (True) or the host."""
    return HookEvent.GPU_GUEST if in_guest else HookEvent.GPU_HOST


def hooks_for(hooks: Sequence[Hook], event: HookEvent) -> tuple[tuple[int, Hook], ...]:
    """The hooks ``event`` runs, with their index in the profile, in file order."""
    return tuple((index, hook) for index, hook in enumerate(hooks) if hook.on is event)


def hook_environment(
    base: Mapping[str, str], vm_name: str, event: HookEvent
) -> dict[str, str]:
    """``base`` (the supervisor's environment) plus what the hook is told."""
    env = {k: v for k, v in base.items() if k != "HANDOFF_MODE"}
    env["HANDOFF_VM"] = vm_name
    env["HANDOFF_EVENT"] = event.value
    side = SIDE.get(event)
    if side is not None:
        env["HANDOFF_MODE"] = side.value
    return env


@dataclass(frozen=True)
class HookOutcome:
    """How one run ended: an exit status, killed at its timeout, or never started."""

    returncode: int | None = None
    timed_out: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.error is None

    def describe(self, timeout: float) -> str:
        if self.error is not None:
            return f"could not start: {self.error}"
        if self.timed_out:
            return f"killed at its timeout ({timeout:g} s)"
        if self.returncode is not None and self.returncode < 0:
            return f"killed by signal {-self.returncode}"
        return f"exit {self.returncode}"
