"""The guest agent: its profile section, its QEMU channel, and the protocol's pure core.

The real qemu-ga answering, powering its guest off and falling back to ACPI
is tests/qemu/test_tpm_agent.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from handoff.base.errors import GuestAgentError
from handoff.base.host import HostPaths
from handoff.profile import Accelerator, parse_profile
from handoff.qemu.agent_protocol import (
    AgentCommand,
    LineBuffer,
    OsInfo,
    encode,
    is_sync_answer,
    parse_osinfo,
    parse_return,
    sync_request,
)
from handoff.session.plan import HostFacts, plan_session

SOURCE = Path("/etc/handoff/win11.toml")
BASE = '[vm]\nname = "win11"\nmemory = "4G"\n'


def test_the_agent_gets_a_virtio_serial_port_on_a_socket_in_qemus_directory() -> None:
    profile = parse_profile(BASE + "[guest_agent]\nenabled = true\n", SOURCE)
    facts = HostFacts(accel=Accelerator.TCG, accel_reason="test", supervisor_uid=0)
    plan = plan_session(profile, facts, HostPaths(run=Path("/run/handoff")))
    argv = plan.argv
    at = argv.index("socket,id=qga0,path=/run/handoff/qemu/win11/agent.sock,server=on,wait=off")
    assert argv[at + 1 : at + 5] == (
        "-device", "virtio-serial-pci,id=vser0",
        "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
    )
    assert plan.paths.agent_socket == Path("/run/handoff/qemu/win11/agent.sock")
    off = plan_session(parse_profile(BASE, SOURCE), facts, HostPaths(run=Path("/run/handoff")))
    assert "virtserialport" not in " ".join(off.argv)
    assert off.paths.agent_socket is None


def test_requests_are_json_lines_and_the_sync_is_delimited_by_0xff() -> None:
    assert encode(AgentCommand.PING) == b'{"execute":"guest-ping"}\n'
    assert json.loads(encode(AgentCommand.SHUTDOWN, {"mode": "powerdown"})) == {
        "execute": "guest-shutdown", "arguments": {"mode": "powerdown"},
    }
    request = sync_request(42)
    assert request[:1] == b"\xff"
    assert json.loads(request[1:]) == {"execute": "guest-sync-delimited", "arguments": {"id": 42}}


def test_whatever_precedes_the_sync_answers_sentinel_is_dropped() -> None:
    buffer = LineBuffer()
    # A late answer meant for an earlier client, half a line, then the sentinel.
    assert buffer.feed(b'{"return": {}}\n{"retu') == []
    assert buffer.synced is False
    assert buffer.feed(b'rn": 7}\xff{"return": 4') == []
    synced: bool = buffer.synced
    assert synced
    (answer,) = buffer.feed(b'2}\n')
    assert is_sync_answer(answer, 42)
    assert not is_sync_answer({"return": 7}, 42)
    assert buffer.feed(b'{"return": {}}\n{"return": {"a": 1}}\n') == [{"return": {}},
                                                                       {"return": {"a": 1}}]


def test_an_answer_that_is_not_json_is_a_clear_error() -> None:
    buffer = LineBuffer(wait_sentinel=False)
    with pytest.raises(GuestAgentError, match="not JSON"):
        buffer.feed(b"login: \n")


def test_an_error_answer_names_the_command_and_the_agents_reason() -> None:
    assert parse_return({"return": {}}, AgentCommand.PING) == {}
    refusal = {"error": {"class": "CommandNotFound", "desc": "Command guest-ping not found"}}
    with pytest.raises(GuestAgentError, match="refused guest-ping: Command guest-ping"):
        parse_return(refusal, AgentCommand.PING)
    with pytest.raises(GuestAgentError, match="answered guest-get-osinfo with"):
        parse_return([1, 2], AgentCommand.GET_OSINFO)


def test_the_guests_os_reads_as_its_pretty_name_or_name_and_version() -> None:
    windows = parse_osinfo({
        "name": "Microsoft Windows", "pretty-name": "Windows 11 Pro", "version": "11",
        "kernel-release": "22631", "id": "mswindows", "machine": "x86_64",
    })
    assert windows == OsInfo("Microsoft Windows", "Windows 11 Pro", "11", "22631")
    assert windows.describe() == "Windows 11 Pro"
    assert parse_osinfo({"name": "Debian GNU/Linux", "version": "12"}).describe() == (
        "Debian GNU/Linux 12"
    )
    assert parse_osinfo({"kernel-release": "6.1.0"}).describe() == "kernel 6.1.0"
    assert parse_osinfo({}).describe() == "unknown OS"
    with pytest.raises(GuestAgentError):
        parse_osinfo("Linux")


def test_handoff_sends_no_agent_command_beyond_the_four_it_needs() -> None:
    assert {c.value for c in AgentCommand} == {
        "guest-sync-delimited", "guest-ping", "guest-get-osinfo", "guest-shutdown",
    }
