"""Shared pytest set-up: see tests/README.md for the three layers of tests.

The testbed plugin batches every selected ``realkernel`` test into one boot of
the real-kernel VM and relays the guest's results into this run; pytester lets
the testbed's own host-side tests run inner pytest sessions.

Hypothesis: properties never time their examples (``deadline=None``: CI runs on
two busy shared cores, where a fast example can take seconds) and their
generators produce mostly valid data, so no health check needs silencing. With
``CI`` set the profile "ci" is loaded: derandomized (every CI run tests the same
examples, so a red run is reproducible and never a lucky draw) and without the
example database. Elsewhere "dev": random examples, the database replays
failures. ``pytest --hypothesis-profile=ci`` reproduces CI locally.
"""

import contextlib
import os
import signal
import uuid
from collections.abc import Generator, Iterator

import pytest
from hypothesis import settings

from tests.host_requirements import CI_MISSING

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# pytester (inner pytest runs for the testbed's host-side tests) is not needed
# in the guest, where every import costs 12-15x.
pytest_plugins = ["tests.testbed.plugin"]
if os.environ.get("TESTBED") != "1":
    pytest_plugins.append("pytester")


# Every test runs with a tag of its own in its environment, which the handoff
# processes it starts and their QEMUs inherit. A test that fails half-way may
# SIGKILL a supervisor, and a SIGKILLed supervisor leaves QEMU running on
# purpose (`handoff recover` waits for it). Whatever still carries the tag
# after the test is killed here, so a red test never leaves a VM eating the
# machine's CPU for the tests after it; a green test that leaked one fails.
TEST_TAG = "HANDOFF_TEST_TAG"


def _tagged_processes(tag: str) -> list[int]:
    needle = f"{TEST_TAG}={tag}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:  # gone, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TEST_TAG, tag)
    yield
    leaked = _tagged_processes(tag)
    for pid in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    report = getattr(request.node, "rep_call", None)
    if leaked and report is not None and report.passed:
        pytest.fail(f"the test left processes running: {leaked}", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A host condition CI lacks (tests/host_requirements.py) fails the test, never skips it."""
    mark = item.get_closest_marker(CI_MISSING)
    if mark is not None:
        pytest.fail(f"CI=true: {mark.args[0]} (this host must provide it; it is never skipped "
                    "in CI)", pytrace=False)
