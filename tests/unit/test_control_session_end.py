"""How a session's end maps to an exit status and a sentence (pure)."""

from __future__ import annotations

import signal

import pytest

from handoff.session.end import ExitStatus, StopRequest, classify_end
from handoff.session.supervisor import describe_event

GUEST_OFF = {"guest": True, "reason": "guest-shutdown"}
QUIT = {"guest": False, "reason": "host-qmp-quit"}


@pytest.mark.parametrize(
    ("returncode", "shutdown", "stop", "killed", "status", "summary"),
    [
        (0, GUEST_OFF, None, False, 0, "the guest powered off"),
        (0, QUIT, None, False, 0, "QEMU quit on a QMP request"),
        (0, QUIT, StopRequest("control"), False, 0, "stopped on request; QEMU exited with "
         "status 0"),
        (0, GUEST_OFF, StopRequest("control"), False, 0, "stopped on request: the guest "
         "powered off"),
        (0, QUIT, StopRequest("signal", signal.SIGINT), False, 130, "stopped on SIGINT; QEMU "
         "exited with status 0"),
        (0, None, StopRequest("signal", signal.SIGTERM), False, 143, "stopped on SIGTERM; QEMU "
         "exited with status 0"),
        (-9, None, StopRequest("signal", signal.SIGINT), True, 130, "stopped on SIGINT; QEMU "
         "was killed by SIGKILL (it had to be killed)"),
        (-9, None, StopRequest("control"), True, 1, "QEMU was killed by SIGKILL: it ignored "
         "quit and SIGTERM and had to be killed"),
        (-9, None, None, False, 1, "QEMU was killed by SIGKILL: QEMU crashed or was killed "
         "from outside handoff"),
        (-11, None, None, False, 1, "QEMU was killed by SIGSEGV: QEMU crashed or was killed "
         "from outside handoff"),
        (1, None, None, False, 1, "QEMU exited with status 1 on its own: QEMU failed"),
        (0, {"guest": True, "reason": "guest-panic"}, None, False, 1, "the guest panicked; "
         "QEMU exited with status 0"),
        (0, {"guest": False, "reason": "host-signal"}, None, False, 1, "QEMU was stopped by a "
         "signal from outside handoff"),
        (0, None, None, False, 1, "QEMU exited with status 0 without a shutdown event"),
    ],
)
def test_the_end_of_a_session_maps_to_a_status_and_an_explanation(
    returncode: int,
    shutdown: dict[str, object] | None,
    stop: StopRequest | None,
    killed: bool,
    status: int,
    summary: str,
) -> None:
    assert classify_end(returncode, shutdown, stop, killed_by_ladder=killed) == (status, summary)


def test_exit_statuses_are_the_documented_numbers() -> None:
    assert [int(s) for s in ExitStatus] == [0, 1, 2, 129, 130, 143]


def test_events_that_matter_get_a_status_line_and_others_none() -> None:
    assert describe_event({"event": "SHUTDOWN", "data": GUEST_OFF}) == (
        "SHUTDOWN by the guest (reason: guest-shutdown)"
    )
    assert describe_event({"event": "RESET", "data": {"guest": True, "reason": "guest-reset"}})\
        == "RESET by the guest (reason: guest-reset)"
    assert describe_event({"event": "STOP"}) == "STOP: the VM is paused"
    assert describe_event({"event": "RESUME"}) == "RESUME: the VM runs"
    assert describe_event({"event": "GUEST_PANICKED", "data": {"action": "pause"}}) == (
        "GUEST_PANICKED: the guest kernel panicked"
    )
    assert describe_event({"event": "RTC_CHANGE", "data": {"offset": 1}}) is None
