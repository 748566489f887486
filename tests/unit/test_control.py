"""The control socket's protocol: JSON lines over a unix socket in the run directory."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from handoff.base.errors import HandoffError, SessionNotRunningError
from handoff.control.server import ControlCommands, ControlRequestError, request, serve_control
from handoff.session.resources import JsonObject


async def echo(message: Mapping[str, Any]) -> JsonObject:
    return {"echo": dict(message)}


async def refuse(message: Mapping[str, Any]) -> JsonObject:
    raise HandoffError("no keyboard is grabbed", fix="add [input] devices")


@pytest.fixture
def commands() -> ControlCommands:
    table = ControlCommands()
    table.register("echo", echo)
    table.register("refuse", refuse)
    return table


async def test_a_registered_command_answers_ok_with_its_result(commands: ControlCommands) -> None:
    assert await commands.dispatch({"command": "echo", "x": 1}) == {
        "ok": True, "result": {"echo": {"command": "echo", "x": 1}},
    }


async def test_an_unknown_command_names_the_known_ones(commands: ControlCommands) -> None:
    assert await commands.dispatch({"command": "nope"}) == {
        "ok": False, "error": "unknown command 'nope'", "fix": "known commands: echo, refuse",
        "code": "unknown-command",
    }


async def test_a_request_without_a_command_string_is_refused(commands: ControlCommands) -> None:
    response = await commands.dispatch({"command": 3})
    assert response["ok"] is False
    assert "command" in response["error"]


async def test_a_handler_error_becomes_message_and_fix(commands: ControlCommands) -> None:
    assert await commands.dispatch({"command": "refuse"}) == {
        "ok": False, "error": "no keyboard is grabbed", "fix": "add [input] devices",
        "code": "failed",
    }


def test_a_command_cannot_be_registered_twice(commands: ControlCommands) -> None:
    with pytest.raises(ValueError, match="already registered"):
        commands.register("echo", echo)


async def test_the_cli_client_talks_to_the_server_over_the_socket(
    tmp_path: Path, commands: ControlCommands
) -> None:
    path = tmp_path / "control.sock"
    path.write_text("stale socket file from a crashed session")
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, path, commands)
        result = await trio.to_thread.run_sync(request, path, {"command": "echo", "y": [1]})
        assert result == {"echo": {"command": "echo", "y": [1]}}
        with pytest.raises(ControlRequestError) as caught:
            await trio.to_thread.run_sync(request, path, {"command": "refuse"})
        assert caught.value.message == "no keyboard is grabbed"
        assert caught.value.fix == "add [input] devices"
        nursery.cancel_scope.cancel()
    assert not path.exists(), "the socket file outlived the server"


async def test_one_connection_carries_many_requests_and_survives_bad_json(
    tmp_path: Path, commands: ControlCommands
) -> None:
    path = tmp_path / "control.sock"

    def converse() -> list[dict[str, Any]]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
            client.sendall(b'{"command": "echo"}\nnot json\n[1]\n\n{"command": "nope"}\n')
            data = b""
            while data.count(b"\n") < 4:
                data += client.recv(65536)
        return [json.loads(line) for line in data.splitlines()]

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, path, commands)
        answers = await trio.to_thread.run_sync(converse)
        nursery.cancel_scope.cancel()
    assert [a["ok"] for a in answers] == [True, False, False, False]
    assert answers[1]["error"] == "the request is not valid JSON"
    assert answers[2]["error"] == "a request must be a JSON object"


def test_asking_a_session_that_is_not_running_says_so(tmp_path: Path) -> None:
    with pytest.raises(SessionNotRunningError) as caught:
        request(tmp_path / "control.sock", {"command": "status"})
    assert "nothing answers on" in caught.value.message
    assert caught.value.fix


def test_a_socket_nobody_listens_on_is_not_running(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # the file stays, nobody listens: a crashed session's leftover
    assert path.exists()
    with pytest.raises(SessionNotRunningError):
        request(path, {"command": "status"})
    os.unlink(path)


def test_switch_and_gpu_name_their_side_in_their_own_field_with_one_vocabulary() -> None:
    from handoff.base.errors import SessionError
    from handoff.control.protocol import Command, Field, Side, requested_side

    assert requested_side({Field.MODE: "guest"}, Command.SWITCH) is Side.GUEST
    assert requested_side({Field.TO: "host"}, Command.GPU) is Side.HOST
    assert requested_side({}, Command.GPU) is Side.TOGGLE
    with pytest.raises(SessionError) as caught:
        requested_side({Field.TO: "sideways"}, Command.GPU)
    assert caught.value.message == "gpu: to 'sideways' is not one of host, guest, toggle"
