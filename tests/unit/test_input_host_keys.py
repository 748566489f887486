"""``[input] host_keys``: the profile key, and handoff never grabbing its own host-keys device."""

from __future__ import annotations

from pathlib import Path

import pytest

from handoff.base.errors import ProfileError
from handoff.input.devices import DeviceInfo, Selection
from handoff.profile import parse_profile

BASE = '[vm]\nname = "w"\nmemory = "1G"\n[input]\n'
SOURCE = Path("/etc/handoff/w.toml")


def test_host_keys_are_linux_key_names_outside_every_chord_with_a_backend() -> None:
    profile = parse_profile(
        BASE + 'backend = "qmp"\nhost_keys = ["KEY_MUTE", "KEY_VOLUMEUP"]\n', SOURCE
    )
    assert profile.input.host_keys == ("KEY_MUTE", "KEY_VOLUMEUP")
    assert parse_profile(BASE + 'backend = "qmp"\n', SOURCE).input.host_keys == ()


@pytest.mark.parametrize(
    ("lines", "message", "fix"),
    [
        ('host_keys = ["KEY_VOLUMUP"]', r"input\.host_keys\[0\]: found the string \"KEY_VOLUMUP\"",
         'did you mean "KEY_VOLUMEUP"'),
        ('host_keys = ["mute"]', r"expected a Linux key name", 'did you mean "KEY_MUTE"'),
        ('host_keys = ["BTN_LEFT"]', r"expected a Linux key name", "button cannot stay"),
        ('host_keys = ["KEY_RIGHTCTRL"]', r'"KEY_RIGHTCTRL", a key of input\.hotkey',
         'remove "KEY_RIGHTCTRL" from host_keys'),
        ('escape_hotkey = ["KEY_LEFTCTRL", "KEY_RIGHTCTRL", "KEY_END"]\n'
         'host_keys = ["KEY_END"]', r"a key of input\.escape_hotkey", "from host_keys"),
        ('host_keys = ["KEY_MUTE", "KEY_MUTE"]', r"named twice", "remove the repeated"),
        ('host_keys = "KEY_MUTE"', r"expected an array of Linux key names", "host_keys = ["),
    ],
)  # fmt: skip
def test_bad_host_keys_are_refused_with_the_fix(lines: str, message: str, fix: str) -> None:
    with pytest.raises(ProfileError, match=message) as caught:
        parse_profile(BASE + f'backend = "qmp"\n{lines}\n', SOURCE)
    assert fix in (caught.value.fix or "")


def test_host_keys_need_an_input_backend() -> None:
    with pytest.raises(ProfileError, match='backend = "none"'):
        parse_profile(BASE + 'host_keys = ["KEY_MUTE"]\n', SOURCE)


def test_the_host_keys_device_is_never_selected_for_hand_off() -> None:
    info = DeviceInfo(
        node="/dev/input/event9", name="handoff host keys", by_id=(), id_path=None,
        vendor="", product="", keyboard=True, mouse=False,
    )
    assert info.is_proxy
    assert not Selection.from_profile((), ()).wants(info)
