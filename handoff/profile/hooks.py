"""``[[hook]]``: programs run when input or a live GPU moves, or the VM starts or stops. Pure.

Shape only: ``on`` one of :class:`~handoff.profile.model.HookEvent`, ``run``
a non-empty argv (no shell: a program and its arguments), ``timeout``
seconds. Whether the program exists is a host fact, refused at preflight by
:func:`handoff.checks.profile_files.check_profile_on_host`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from handoff.profile.model import SECTION_KEYS, Hook, HookEvent

if TYPE_CHECKING:
    from handoff.profile.parse import _Reader

#: ``timeout`` when the hook has none (the model's default).
DEFAULT_TIMEOUT = 5.0
#: Bounds of ``timeout`` (seconds): long enough for ddcutil, short enough to notice.
MIN_TIMEOUT, MAX_TIMEOUT = 0.1, 300.0
_EXAMPLE = '["notify-send", "win10", "keyboard and mouse moved"]'


def parse_hooks(r: _Reader, data: Mapping[str, Any]) -> tuple[Hook, ...]:
    """Every ``[[hook]]`` table, in file order (the order hooks of one event run in)."""
    hooks = []
    for index, t in enumerate(r.array_of_tables(data, "hook")):
        prefix = f"hook[{index}]"
        r.check_keys(t, prefix, SECTION_KEYS["hook"])
        if "on" not in t:
            raise r.error(
                f"{prefix}.on", "is missing; expected when the hook runs",
                'add on = "guest" (or "host", "gpu-guest", "gpu-host", "start", "stop")',
            )
        on = r.enum(t, prefix, "on", HookEvent, HookEvent.GUEST)
        run = r.strings(t, prefix, "run", expected="the program and its arguments",
                        example=_EXAMPLE)
        if not run or not run[0].strip():
            raise r.error(
                f"{prefix}.run",
                "is missing or empty; expected the program and its arguments (no shell)",
                f"write run = {_EXAMPLE} (for a shell line: run = [\"sh\", \"-c\", \"...\"])",
            )
        timeout = _timeout(r, t, prefix)
        hooks.append(Hook(on=on, run=tuple(run), timeout=timeout))
    return tuple(hooks)


def _timeout(r: _Reader, t: Mapping[str, Any], prefix: str) -> float:
    if "timeout" not in t:
        return DEFAULT_TIMEOUT
    value = t["timeout"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        MIN_TIMEOUT <= value <= MAX_TIMEOUT
    ):
        raise r.error(
            f"{prefix}.timeout",
            f"found {value!r}; expected seconds from {MIN_TIMEOUT:g} to {MAX_TIMEOUT:g}",
            "write timeout = 5 (a number without quotes)",
        )
    return float(value)
