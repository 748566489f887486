"""The trio QMP bridge against a real QEMU: commands, events, errors, concurrency, cancellation."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from handoff.base.errors import QmpError
from handoff.qemu.process import QemuProcess
from handoff.qemu.qmp import (
    QmpCommandError,
    QmpConnection,
    QmpDisconnectedError,
    QmpEvent,
    open_qmp,
)
from handoff.qemu.wire import QEMU_REQUEST_QUEUE

from .conftest import bare_argv

pytestmark = pytest.mark.qemu


@pytest.fixture
async def qemu(log_path: Path) -> AsyncIterator[tuple[QemuProcess, socket.socket]]:
    ours, theirs = socket.socketpair()
    process = await QemuProcess.start(
        bare_argv(theirs.fileno(), "-S"), log_path=log_path, pass_fds=[theirs.fileno()]
    )
    theirs.close()
    try:
        yield process, ours
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        ours.close()


@pytest.fixture
async def qmp(qemu: tuple[QemuProcess, socket.socket]) -> AsyncIterator[QmpConnection]:
    async with open_qmp(qemu[1]) as connection:
        yield connection


async def test_a_command_returns_its_return_value(qmp: QmpConnection) -> None:
    status = await qmp.execute("query-status")
    assert isinstance(status, dict)
    assert status["status"] == "prelaunch"
    assert status["running"] is False


async def test_a_refused_command_raises_with_qemus_error_class(qmp: QmpConnection) -> None:
    with pytest.raises(QmpCommandError) as caught:
        await qmp.execute("no-such-command")
    assert caught.value.error_class == "CommandNotFound"
    assert "no-such-command" in caught.value.message


async def test_commands_from_many_tasks_each_get_their_own_answer(qmp: QmpConnection) -> None:
    names: dict[int, object] = {}

    async def ask(i: int) -> None:
        # qom-get of different properties proves replies are routed per caller.
        prop = "type" if i % 2 else "realized"
        names[i] = await qmp.execute("qom-get", {"path": "/machine/unattached/device[0]",
                                                  "property": prop})

    async with trio.open_nursery() as nursery:
        for i in range(QEMU_REQUEST_QUEUE * 4):
            nursery.start_soon(ask, i)
    assert len(names) == QEMU_REQUEST_QUEUE * 4
    assert {names[i] for i in range(0, len(names), 2)} == {True}
    assert len({names[i] for i in range(1, len(names), 2)}) == 1
    assert isinstance(names[1], str)


async def test_a_cancelled_command_leaves_the_connection_usable(qmp: QmpConnection) -> None:
    async with trio.open_nursery() as nursery:

        async def doomed() -> None:
            await qmp.execute("query-status")
            raise AssertionError("the cancelled call returned")  # pragma: no cover

        with trio.CancelScope() as scope:
            nursery.start_soon(doomed)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert not scope.cancelled_caught
    status = await qmp.execute("query-status")
    assert isinstance(status, dict)


async def test_events_arrive_in_order_and_end_when_qemu_quits(
    qemu: tuple[QemuProcess, socket.socket], qmp: QmpConnection
) -> None:
    seen: list[QmpEvent] = []

    async def collect() -> None:
        async for event in qmp.events:
            seen.append(event)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            await qmp.execute("cont")
            await qmp.execute("quit")
            assert await qemu[0].wait() == 0
    assert [e["event"] for e in seen] == ["RESUME", "SHUTDOWN"]
    assert seen[1]["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert not qmp.connected


async def test_commands_after_qemu_exits_raise_disconnected(
    qemu: tuple[QemuProcess, socket.socket], qmp: QmpConnection
) -> None:
    qemu[0].kill()
    await qemu[0].wait()
    with trio.fail_after(10):
        async for _ in qmp.events:
            pass
    with pytest.raises(QmpDisconnectedError):
        await qmp.execute("query-status")


async def test_aclose_is_idempotent_and_later_commands_are_refused(qmp: QmpConnection) -> None:
    await qmp.aclose()
    await qmp.aclose()
    with pytest.raises(QmpDisconnectedError, match="closed"):
        await qmp.execute("query-status")


async def test_connecting_to_a_qemu_that_exits_first_is_a_qmp_error(log_path: Path) -> None:
    ours, theirs = socket.socketpair()
    process = await QemuProcess.start(
        bare_argv(theirs.fileno(), "-no-such-option"), log_path=log_path,
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    with trio.fail_after(30), pytest.raises(QmpError, match="closed the connection"):
        async with open_qmp(ours):
            pass  # pragma: no cover
    assert await process.wait() == 1
    assert "-no-such-option" in process.log_tail()


async def test_a_silent_monitor_times_out_with_a_clear_error(tmp_path: Path) -> None:
    # A listening socket nobody greets on: the connect succeeds, the greeting never comes.
    path = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    try:
        with pytest.raises(QmpError, match=r"^QEMU's monitor: QEMU did not answer within 0\.2 s"):
            async with open_qmp(path, greeting_timeout=0.2):
                pass  # pragma: no cover
    finally:
        listener.close()


async def test_a_qemu_that_dies_after_its_greeting_is_a_qmp_error_not_a_socket_error(
    tmp_path: Path,
) -> None:
    # QEMU greets before it realizes -device options: one it cannot realize
    # makes it exit with handoff's qmp_capabilities unread (ECONNRESET on the
    # next read, or EPIPE on the write), which must be the same QmpError.
    for attempt in range(3):
        ours, theirs = socket.socketpair()
        log = tmp_path / f"qemu-{attempt}.log"
        argv = bare_argv(theirs.fileno(), "-device", "virtio-input-host-pci,evdev=/nonexistent")
        process = await QemuProcess.start(argv, log_path=log, pass_fds=[theirs.fileno()])
        theirs.close()
        with trio.fail_after(30), pytest.raises(QmpError, match="closed the connection"):
            async with open_qmp(ours):
                pass  # pragma: no cover
        assert await process.wait() == 1
        assert "Could not open '/nonexistent'" in process.log_tail()
