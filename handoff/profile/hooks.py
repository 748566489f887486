"""``[[hook]]``: programs run when input or a live GPU moves, or the VM starts or stops. Pure.

Shape only: ``on`` one of :class:`~handoff.profile.model.HookEvent`, ``run``
a non-empty argv (no shell: a program and its arguments), ``timeout``
seconds. Whether the program exists is a host fact, refused at preflight by
:func:`handoff.checks.profile_files.check_profile_on_host`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from handoff.profile.model import SECTION_KEYS, Hook, HookEvent
from handoff.profile.reader import Custom, FieldParser, Reader, Texts

#: ``timeout`` when the hook has none (the model's default).
DEFAULT_TIMEOUT = 5.0
#: Bounds of ``timeout`` (seconds): long enough for ddcutil, short enough to notice.
MIN_TIMEOUT, MAX_TIMEOUT = 0.1, 300.0
_EXAMPLE = '["notify-send", "win10", "keyboard and mouse moved"]'


def _on(r: Reader, t: Mapping[str, Any], prefix: str, key: str, default: Any) -> Any:
    if key not in t:
        raise r.error(
            f"{prefix}.on", "is missing; expected when the hook runs",
            'add on = "guest" (or "host", "gpu-guest", "gpu-host", "start", "stop")',
        )
    return r.enum(t, prefix, key, HookEvent, HookEvent.GUEST)


def _run(r: Reader, t: Mapping[str, Any], prefix: str, key: str, default: Any) -> Any:
    run = Texts("the program and its arguments", _EXAMPLE).read(r, t, prefix, key, ())
    if not run or not run[0].strip():
        raise r.error(
            f"{prefix}.run",
            "is missing or empty; expected the program and its arguments (no shell)",
            f"write run = {_EXAMPLE} (for a shell line: run = [\"sh\", \"-c\", \"...\"])",
        )
    return tuple(run)


def _timeout(r: Reader, t: Mapping[str, Any], prefix: str, key: str, default: Any) -> Any:
    if key not in t:
        return DEFAULT_TIMEOUT
    value = t[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        MIN_TIMEOUT <= value <= MAX_TIMEOUT
    ):
        raise r.error(
            f"{prefix}.{key}",
            f"found {value!r}; expected seconds from {MIN_TIMEOUT:g} to {MAX_TIMEOUT:g}",
            "write timeout = 5 (a number without quotes)",
        )
    return float(value)


HOOK_KEYS: Mapping[str, FieldParser] = {
    "on": Custom(_on), "run": Custom(_run), "timeout": Custom(_timeout),
}


def parse_hooks(r: Reader, data: Mapping[str, Any]) -> tuple[Hook, ...]:
    """Every ``[[hook]]`` table, in file order (the order hooks of one event run in)."""
    hooks = []
    for index, t in enumerate(r.array_of_tables(data, "hook")):
        prefix = f"hook[{index}]"
        r.check_keys(t, prefix, SECTION_KEYS["hook"])
        hooks.append(Hook(**r.fields(t, prefix, Hook, HOOK_KEYS)))
    return tuple(hooks)
