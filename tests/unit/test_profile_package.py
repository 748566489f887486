"""The profile package's seams: one key table, key names as data, no host effects.

handoff.profile is model (dataclasses, enums, the key table derived from
them), parse and render; the host half is handoff.checks.profile_files and
the OVMF vars copy handoff.qemu.firmware_vars. These tests hold those boundaries:
parsing and rendering touch nothing on the host, neither the profile parser
nor the keymap imports evdev (handoff.input.keynames is checked against it
instead), and the model's selector kinds are the ones the input layer reads.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest

from handoff.base.errors import ProfileError
from handoff.checks.access import Identity, may_enter
from handoff.input.devices import parse_selector
from handoff.input.keymap import KEY_TABLE, hotkey_codes
from handoff.input.keynames import KEY_CODES
from handoff.profile import (
    SECTIONS,
    Input,
    Profile,
    SelectorKind,
    Vm,
    parse_profile,
    profile_to_toml,
    selector_kind,
)
from tests.unit.test_profile import EVERYTHING, SOURCE

REPO = Path(__file__).resolve().parent.parent.parent

# --------------------------------------------------------------------------- key names


def test_the_key_name_table_is_evdevs_kernel_table() -> None:
    from evdev import ecodes

    expected = {
        name: code
        for name, code in ecodes.ecodes.items()
        if name.startswith(("KEY_", "BTN_")) and isinstance(code, int)
    }
    # A difference: regenerate with `python -m tools.keynames --write handoff/input/keynames.py`.
    assert dict(KEY_CODES) == expected


def test_the_keymaps_linux_names_agree_with_the_key_name_table() -> None:
    assert all(KEY_CODES[name] == code for name, code, _ in KEY_TABLE)


def test_the_generator_writes_the_checked_in_table() -> None:
    from tools.keynames import evdev_key_codes, render

    assert render(evdev_key_codes()) == (REPO / "handoff/input/keynames.py").read_text()


def test_profile_parsing_and_the_hotkey_never_import_evdev() -> None:
    program = (
        "import sys\n"
        "from pathlib import Path\n"
        "from handoff.profile import parse_profile\n"
        "from handoff.input.keymap import hotkey_codes\n"
        "p = parse_profile('[vm]\\nname = \"w\"\\nmemory = \"1G\"\\n[input]\\n"
        "hotkey = [\"KEY_LEFTMETA\", \"BTN_SIDE\"]\\n', Path('/etc/w.toml'))\n"
        "assert hotkey_codes(p.input.hotkey) == {125, 0x113}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'evdev'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_a_hotkey_name_outside_the_table_is_refused_by_the_profile() -> None:
    text = '[vm]\nname = "w"\nmemory = "1G"\n[input]\nhotkey = ["KEY_SCROLLOCK"]\n'
    with pytest.raises(ProfileError) as caught:
        parse_profile(text, SOURCE)
    assert caught.value.key == "input.hotkey[0]"
    assert caught.value.fix == 'did you mean "KEY_SCROLLLOCK"?'
    assert hotkey_codes(["BTN_EXTRA", "KEY_PAUSE"]) == {0x114, 119}


# --------------------------------------------------------------------------- one key table


def test_the_sections_are_the_profiles_fields_in_order() -> None:
    assert [s.name for s in SECTIONS] == [
        "vm", "firmware", "disk", "network", "sound", "display", "passthrough",
        "host_display", "input", "cpu", "memory", "tpm", "guest_agent", "control", "hook",
        "monitor", "looking_glass", "usb", "share",
    ]
    assert [s.array for s in SECTIONS] == [
        False, False, True, True, False, False, True, False, False, False, False, False, False,
        False, True, False, False, True, True,
    ]
    assert {s.attr for s in SECTIONS} == {f.name for f in fields(Profile)} - {"source"}


def test_a_field_is_a_key_under_its_toml_name() -> None:
    vm = next(s for s in SECTIONS if s.name == "vm")
    assert "memory" in vm.keys
    assert "memory_mib" not in vm.keys
    assert len(vm.keys) == len(fields(Vm))
    written = profile_to_toml(parse_profile(EVERYTHING, SOURCE))
    assert 'memory = 8192' in written.splitlines()


def test_a_default_that_depends_on_other_keys_is_written_back() -> None:
    # display.vga defaults to "std" beside a frontend: "none" must be written out.
    text = '[vm]\nname = "w"\nmemory = "1G"\n[display]\nfrontend = "gtk"\nvga = "none"\n'
    profile = parse_profile(text, SOURCE)
    written = profile_to_toml(profile)
    assert 'vga = "none"' in written.splitlines()
    assert parse_profile(written, SOURCE) == profile


def test_everything_rendered_is_a_key_the_parser_accepts() -> None:
    keys = {s.name: set(s.keys) for s in SECTIONS}
    section = ""
    for line in profile_to_toml(parse_profile(EVERYTHING, SOURCE)).splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif line:
            assert line.split(" = ")[0] in keys[section], line


# --------------------------------------------------------------------------- no host effects


def test_parsing_and_rendering_touch_nothing_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    touched: list[str] = []

    def spy(name: str, real: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            touched.append(name)
            return real(*args, **kwargs)

        return wrapper

    for module, names in (
        (os, ("stat", "lstat", "chown", "replace", "open", "getgrouplist", "access", "listdir")),
        (pwd, ("getpwnam", "getpwuid")),
        (grp, ("getgrgid", "getgrnam")),
    ):
        for name in names:
            real = getattr(module, name)
            monkeypatch.setattr(module, name, spy(f"{module.__name__}.{name}", real))
    profile = parse_profile(EVERYTHING, SOURCE)  # vm.user, disks, OVMF, a ROM file
    assert parse_profile(profile_to_toml(profile), SOURCE) == profile
    monkeypatch.undo()
    assert touched == []


# --------------------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("by-id:usb-Logitech_USB_Receiver-event-kbd", SelectorKind.BY_ID),
        ("path:pci-0000:00:14.0-usb-0:2:1.0", SelectorKind.PATH),
        ("usb:046d:C52B", SelectorKind.USB),
        ("name:AT Translated Set 2 keyboard", SelectorKind.NAME),
    ],
)
def test_each_selector_kind_is_read_by_the_profile_and_the_input_layer(
    text: str, kind: SelectorKind
) -> None:
    assert selector_kind(text) is kind
    assert parse_selector(text).kind is kind
    profile = parse_profile(
        f'[vm]\nname = "w"\nmemory = "1G"\n[input]\ndevices = ["{text}"]\n', SOURCE
    )
    assert profile.input == Input(devices=(text,))


@pytest.mark.parametrize(
    "text", ["by-id:", "by-id:a/b", "usb:046d", "usb:046d:c52", "path:", "serial:x", "kbd"]
)
def test_a_string_of_no_selector_kind_is_none(text: str) -> None:
    assert selector_kind(text) is None


# --------------------------------------------------------------------------- directory search


GAMER = Identity("gamer", 1500, frozenset({1500, 44}))
ROOT = Identity("root", 0, frozenset({0}))


@pytest.mark.parametrize(
    ("mode", "owner", "group", "who", "allowed"),
    [
        (0o700, 1500, 0, GAMER, True),  # the owner's x bit
        (0o070, 1500, 1500, GAMER, False),  # owner bits decide for the owner, not group bits
        (0o750, 0, 44, GAMER, True),  # a supplementary group's x bit
        (0o740, 0, 44, GAMER, False),  # r without x: listable, not enterable
        (0o701, 0, 0, GAMER, True),  # other's x bit
        (0o700, 0, 0, GAMER, False),
        (0o000, 7, 7, ROOT, True),  # root searches anything
    ],
)
def test_may_enter_follows_owner_then_group_then_other(
    mode: int, owner: int, group: int, who: Identity, allowed: bool
) -> None:
    assert may_enter(mode, owner, group, who) is allowed
