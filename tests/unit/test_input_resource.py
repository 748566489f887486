"""The input resource's contract with the session: QEMU arguments, switch command, status."""

from __future__ import annotations

from pathlib import Path

import pytest

from handoff.errors import InputError
from handoff.host import HostPaths
from handoff.input.resource import InputHandoff
from handoff.profile import Input, InputBackend, InputMode, Profile, Vm


def resource(tmp_path: Path, **fields: object) -> InputHandoff:
    profile = Profile(
        vm=Vm(name="demo", memory_mib=512),
        source=tmp_path / "demo.toml",
        input=Input(**fields),  # type: ignore[arg-type]
    )
    return InputHandoff(profile, HostPaths(run=tmp_path / "run"))


def test_the_qmp_backend_gives_qemu_a_monitor_of_its_own_in_its_socket_directory(
    tmp_path: Path,
) -> None:
    args = resource(tmp_path, backend=InputBackend.QMP).qemu_args()
    socket = tmp_path / "run" / "demo" / "qemu" / "input.qmp"
    assert args == [
        "-chardev",
        f"socket,id=handoff-input,path={socket},server=on,wait=off",
        "-mon",
        "chardev=handoff-input,mode=control",
    ]


def test_without_a_backend_input_adds_nothing(tmp_path: Path) -> None:
    handoff = resource(tmp_path)
    assert handoff.qemu_args() == []
    assert handoff.status() == {"backend": "none", "mode": "host", "pending": None, "devices": []}


def test_a_bad_hotkey_or_selector_is_refused_before_anything_changes(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="CTRL"):
        resource(tmp_path, hotkey=("CTRL",))
    with pytest.raises(InputError, match="event3"):
        resource(tmp_path, devices=("event3",))


async def test_switch_names_the_modes_it_accepts(tmp_path: Path) -> None:
    handoff = resource(tmp_path, backend=InputBackend.QMP, start_in=InputMode.GUEST)
    with pytest.raises(InputError) as caught:
        await handoff._switch({"command": "switch", "mode": "sideways"})
    assert caught.value.fix == "handoff switch [host|guest|toggle]"
    with pytest.raises(InputError, match="not running"):
        await handoff._switch({"command": "switch", "mode": "host"})


async def test_release_is_idempotent(tmp_path: Path) -> None:
    handoff = resource(tmp_path, backend=InputBackend.QMP)
    await handoff.acquire()
    await handoff.release()
    await handoff.release()
