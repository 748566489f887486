"""The profile's ``[input]`` section: chords of Linux key names and device selectors.

Read by :mod:`handoff.profile.reader`'s table (every key's parser and error
text below), then the rules between the chords (the GPU chord and the escape
chord are chords of their own, each needs an input backend, the hotkey names
each key once). Pure; key names come from handoff.input.keynames, never evdev.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from typing import Any

from handoff.profile.model import Input, InputBackend, InputMode, SelectorKind
from handoff.profile.reader import Custom, FieldParser, Item, Reader, Texts, show

#: What may follow each selector kind's "KIND:".
_SELECTOR_VALUE: Mapping[SelectorKind, re.Pattern[str]] = {
    SelectorKind.BY_ID: re.compile(r"^[^/\s][^/]*$"),
    SelectorKind.PATH: re.compile(r"^\S+$"),
    SelectorKind.USB: re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$"),
    SelectorKind.NAME: re.compile(r"^.+$"),
}
_SELECTOR_PLACEHOLDER: Mapping[SelectorKind, str] = {
    SelectorKind.BY_ID: "NAME",
    SelectorKind.PATH: "ID_PATH",
    SelectorKind.USB: "VVVV:PPPP",
    SelectorKind.NAME: "TEXT",
}
_FORMS = [f"{kind.value}:{_SELECTOR_PLACEHOLDER[kind]}" for kind in SelectorKind]
#: "by-id:NAME, path:ID_PATH, usb:VVVV:PPPP or name:TEXT"
_SELECTOR_FORMS = f"{', '.join(_FORMS[:-1])} or {_FORMS[-1]}"


def _key_codes() -> Mapping[str, int]:
    """The Linux key-name table, loaded when a profile names keys (not on every run)."""
    from handoff.input.keynames import KEY_CODES

    return KEY_CODES


def _is_key_name(name: str) -> bool:
    return name in _key_codes()


def selector_kind(text: str) -> SelectorKind | None:
    """The kind of an input device selector ``KIND:VALUE``; None when it is not one."""
    prefix, sep, value = text.partition(":")
    kind = next((k for k in SelectorKind if k.value == prefix), None)
    if not sep or kind is None or not _SELECTOR_VALUE[kind].match(value):
        return None
    return kind


# --------------------------------------------------------------------------- [input]


def _hotkey_fix(key_name: str) -> str:
    names = _key_codes().keys()
    upper = key_name.upper()
    guess = upper if upper in names else f"KEY_{upper}" if f"KEY_{upper}" in names else None
    close = [guess] if guess else difflib.get_close_matches(upper, sorted(names), n=1)
    return (
        f'did you mean "{close[0]}"?'
        if close
        else "use a name from `evtest` or linux/input-event-codes.h, e.g. KEY_SCROLLLOCK"
    )


def _hotkey(r: Reader, t: Mapping[str, Any], prefix: str, key: str, default: Any) -> Any:
    if t.get(key) == []:
        raise r.error(
            "input.hotkey", "found the empty array []; expected at least one key",
            'write hotkey = ["KEY_LEFTCTRL", "KEY_RIGHTCTRL"] or ["KEY_SCROLLLOCK"]',
        )
    return _HOTKEY.read(r, t, prefix, key, default)


def _key_names(example: str, such_as: str, fix: str | Callable[[str], str]) -> Texts:
    return Texts(
        "Linux key names", example,
        Item(_is_key_name, f"a Linux key name such as {such_as}", fix),
    )


_HOTKEY = _key_names(
    '["KEY_LEFTCTRL", "KEY_RIGHTCTRL"]', '"KEY_LEFTCTRL" or "KEY_SCROLLLOCK"', _hotkey_fix
)


def _selectors() -> Texts:
    return Texts(
        f"device selectors ({_SELECTOR_FORMS})", '["by-id:usb-Logitech_USB_Receiver-event-kbd"]',
        Item(
            lambda text: selector_kind(text) is not None,
            f"a selector of the form {_SELECTOR_FORMS}",
            'write e.g. "by-id:usb-Logitech_USB_Receiver-event-kbd" (ls '
            '/dev/input/by-id) or "usb:046d:c52b" (lsusb)',
        ),
    )


INPUT_KEYS: Mapping[str, FieldParser] = {
    "hotkey": Custom(_hotkey),
    "devices": _selectors(),
    "exclude": _selectors(),
    # Every chord alike: a wrong name gets "did you mean", a repeated key is refused.
    "gpu_hotkey": _key_names('["KEY_LEFTCTRL", "KEY_LEFTALT", "KEY_G"]', '"KEY_G"', _hotkey_fix),
    "escape_hotkey": _key_names(
        '["KEY_LEFTCTRL", "KEY_RIGHTCTRL", "KEY_END"]', '"KEY_END"', _hotkey_fix
    ),
    "host_keys": _key_names('["KEY_MUTE", "KEY_VOLUMEUP"]', '"KEY_MUTE"', _hotkey_fix),
}


def parse_input(
    r: Reader, data: Mapping[str, Any], handover: bool = False, live: bool = False
) -> Input:
    t = r.section(data, "input")
    start_in = InputMode.GUEST if handover else InputMode.HOST
    chosen = Input(**r.fields(t, "input", Input, INPUT_KEYS, defaults={"start_in": start_in}))
    for key, chord in (("input.hotkey", chosen.hotkey), ("input.gpu_hotkey", chosen.gpu_hotkey),
                       ("input.escape_hotkey", chosen.escape_hotkey)):
        if len(set(chord)) != len(chord):
            raise r.error(
                key, f"found {show(list(chord))} with a repeated key; expected each key once",
                "remove the repeated key name",
            )
    _check_escape_hotkey(r, chosen)
    _check_gpu_hotkey(r, chosen, live)
    return chosen


_NEEDS_BACKEND = (
    'found a chord with backend = "none"; expected an input backend (handoff reads '
    "the keyboards only with one)"
)
_ADD_BACKEND = 'add backend = "qmp" (or "virtio") to [input]'


def _check_gpu_hotkey(r: Reader, chosen: Input, live: bool) -> None:
    """input.gpu_hotkey: a chord of its own (neither contains the hotkey or the escape
    chord nor is contained in one: pressing one would fire both), a live group to
    move and an input backend to read it."""
    gpu = chosen.gpu_hotkey
    if not gpu:
        return
    example = '["KEY_LEFTCTRL", "KEY_LEFTALT", "KEY_G"]'
    for key, other in (("input.hotkey", chosen.hotkey), ("input.escape_hotkey",
                                                         chosen.escape_hotkey)):
        if other and (set(gpu) <= set(other) or set(other) <= set(gpu)):
            raise r.error(
                "input.gpu_hotkey",
                f"found {show(list(gpu))}, which overlaps {key} {show(list(other))} (one "
                "chord inside the other: pressing one would fire both); expected a chord of "
                "its own",
                f"choose keys of its own, e.g. gpu_hotkey = {example}",
            )
    if not live:
        raise r.error(
            "input.gpu_hotkey",
            "found a chord with no [[passthrough]] live = true; expected a live group for "
            "it to move",
            "add live = true to the GPU's [[passthrough]] entries, or remove gpu_hotkey",
        )
    if chosen.backend is InputBackend.NONE:
        raise r.error("input.gpu_hotkey", _NEEDS_BACKEND, _ADD_BACKEND)


def _check_escape_hotkey(r: Reader, chosen: Input) -> None:
    """input.escape_hotkey: another chord than the hotkey, with a backend."""
    escape = chosen.escape_hotkey
    if escape and set(escape) == set(chosen.hotkey):
        raise r.error(
            "input.escape_hotkey", "found the same keys as input.hotkey; expected another chord",
            'add a key: ["KEY_LEFTCTRL", "KEY_RIGHTCTRL", "KEY_END"]',
        )
    if escape and chosen.backend is InputBackend.NONE:
        raise r.error("input.escape_hotkey", _NEEDS_BACKEND, _ADD_BACKEND)
