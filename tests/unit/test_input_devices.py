"""Which devices are handed off, and how they are recognised again after a re-plug."""

from __future__ import annotations

import pytest

from handoff.base.errors import InputError
from handoff.input.devices import (
    DeviceInfo,
    Selection,
    classify_by_capabilities,
    parse_selector,
)
from handoff.input.keymap import hotkey_codes


def info(**overrides: object) -> DeviceInfo:
    base: dict[str, object] = {
        "node": "/dev/input/event3",
        "name": "Logitech USB Receiver",
        "by_id": ("usb-Logitech_USB_Receiver-event-mouse",),
        "id_path": "pci-0000:00:14.0-usb-0:2:1.1",
        "vendor": "046d",
        "product": "c52b",
        "keyboard": False,
        "mouse": True,
    }
    base.update(overrides)
    return DeviceInfo(**base)  # type: ignore[arg-type]


def test_identity_prefers_the_by_id_link_then_the_path_then_name_and_ids() -> None:
    assert info().identity == "by-id:usb-Logitech_USB_Receiver-event-mouse"
    assert info(by_id=()).identity == "path:pci-0000:00:14.0-usb-0:2:1.1/Logitech USB Receiver"
    uinput = info(by_id=(), id_path=None, name="kbd", vendor="0000", product="0000")
    assert uinput.identity == "name:kbd/usb:0000:0000"


def test_identity_does_not_depend_on_the_event_number() -> None:
    assert info(node="/dev/input/event3").identity == info(node="/dev/input/event9").identity


def test_every_keyboard_and_mouse_is_taken_when_the_profile_names_none() -> None:
    select = Selection()
    assert select.wants(info())
    assert select.wants(info(mouse=False, keyboard=True))
    assert not select.wants(info(mouse=False, keyboard=False))


def test_selectors_pick_devices_and_exclusions_win() -> None:
    select = Selection.from_profile(["usb:046D:C52B", "name:Power Button"], ["path:x"])
    assert select.wants(info())
    assert select.wants(info(name="Power Button", vendor="", keyboard=False, mouse=False))
    assert not select.wants(info(id_path="x"))
    assert not Selection.from_profile(["by-id:other"], []).wants(info())


def test_handoffs_own_proxies_are_never_taken() -> None:
    assert not Selection().wants(info(name="handoff virtio mouse (demo)"))
    assert not Selection(proxy_nodes=frozenset({"/dev/input/event3"})).wants(info())


@pytest.mark.parametrize("text", ["event3", "usb:46d:c52b", "serial:1", "name:"])
def test_a_bad_selector_is_refused_with_a_fix(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_selector(text)
    assert caught.value.fix


def test_without_udev_capabilities_classify_like_udevs_input_id() -> None:
    keyboard = {1: list(range(1, 120))}
    mouse = {1: [0x110, 0x111], 2: [0, 1, 8]}
    assert classify_by_capabilities(keyboard) == (True, False)
    assert classify_by_capabilities(mouse) == (False, True)
    assert classify_by_capabilities({1: [1, 2, 3]}) == (False, False)


def test_the_hotkey_is_parsed_from_linux_key_names() -> None:
    assert hotkey_codes(["KEY_LEFTCTRL", "KEY_RIGHTCTRL"]) == {29, 97}
    assert hotkey_codes(["KEY_SCROLLLOCK"]) == {70}
    with pytest.raises(InputError):
        hotkey_codes(["CTRL"])
    with pytest.raises(InputError):
        hotkey_codes([])
