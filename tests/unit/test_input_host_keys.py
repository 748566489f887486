"""``[input] host_keys``: the profile key, and handoff never grabbing its own host-keys device."""

from __future__ import annotations

from pathlib import Path

import pytest

import handoff.input.resource as resource_module
from handoff.base.errors import InputError, ProfileError
from handoff.base.host import HostPaths
from handoff.input.devices import DeviceInfo, Selection
from handoff.input.host_key_check import KeySource, check_host_keys, unreported_host_keys
from handoff.input.host_keys import HostKeysDevice
from handoff.input.keynames import KEY_CODES
from handoff.input.resource import InputHandoff
from handoff.input.virtio import VirtioProxies
from handoff.profile import Input, InputBackend, Profile, Vm, parse_profile

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
        node="/dev/input/event9",
        name="handoff host keys",
        by_id=(),
        id_path=None,
        vendor="",
        product="",
        keyboard=True,
        mouse=False,
    )
    assert info.is_proxy
    assert not Selection.from_profile((), ()).wants(info)


KEYBOARD = KeySource("Office Keyboard", "/dev/input/event3", frozenset(range(1, 128)))
MEDIA = KeySource("Media Remote", "/dev/input/event7", frozenset({KEY_CODES["KEY_PLAYPAUSE"]}))


def test_a_host_key_on_some_grabbed_device_is_accepted() -> None:
    check_host_keys(("KEY_MUTE", "KEY_PLAYPAUSE"), [KEYBOARD, MEDIA])
    assert unreported_host_keys(("KEY_MUTE",), [KEYBOARD]) == []


def test_a_host_key_no_grabbed_device_has_is_refused_naming_key_devices_and_fix() -> None:
    with pytest.raises(InputError) as caught:
        check_host_keys(("KEY_MUTE", "KEY_PLAYPAUSE", "KEY_MICMUTE"), [KEYBOARD])
    message = caught.value.message
    assert '"KEY_PLAYPAUSE", "KEY_MICMUTE" are not a key of any device' in message
    assert "KEY_MUTE" not in message.replace("KEY_MICMUTE", "")
    assert "'Office Keyboard' (/dev/input/event3)" in message
    assert 'remove "KEY_PLAYPAUSE", "KEY_MICMUTE" from [input] host_keys' in (
        caught.value.fix or ""
    )


def test_with_no_selected_device_present_yet_nothing_is_judged() -> None:
    check_host_keys(("KEY_PLAYPAUSE",), [])  # the keyboard may be plugged in later


async def test_the_resource_refuses_it_at_start_before_creating_any_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Selection] = []

    def sources(selection: Selection, classify: object) -> list[KeySource]:
        seen.append(selection)
        return [KEYBOARD]

    def created(self: object) -> None:
        raise AssertionError("a device was created before the host keys were checked")

    monkeypatch.setattr(resource_module, "selected_key_sources", sources)
    monkeypatch.setattr(HostKeysDevice, "create", created)
    monkeypatch.setattr(VirtioProxies, "create", created)
    profile = Profile(
        vm=Vm(name="w", memory_mib=512),
        source=SOURCE,
        input=Input(
            backend=InputBackend.VIRTIO,
            devices=("name:Office Keyboard",),
            host_keys=("KEY_VOLUMEUP", "KEY_PLAYPAUSE"),
        ),
    )
    handoff = InputHandoff(profile, HostPaths(run=tmp_path / "run"))
    with pytest.raises(InputError, match='"KEY_PLAYPAUSE" is not a key of any device'):
        await handoff.acquire()
    assert [s.include for s in seen] == [
        Selection.from_profile(("name:Office Keyboard",), ()).include
    ]
    assert not (tmp_path / "run").exists()
