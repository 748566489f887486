"""pytest plugin: ``realkernel`` tests run in the testbed VM, one boot per pytest run.

On the host, after collection (and after ``-m``/``-k`` deselection), every
selected ``realkernel`` test is replaced by a :class:`GuestItem` with the same
node id. When the first of them is reached, one testbed boot runs
``python -m pytest <those node ids>`` inside the guest, where the tests run for
real; the guest writes each test report as a JSON line to the run share. Each
GuestItem then reports its test's own guest reports (setup, call, teardown:
tracebacks, captured output, skip reasons, durations) into the host's run, the
way pytest-xdist relays a worker's reports. The host never executes a
realkernel test's body or fixtures.

A test the guest never reported (boot failure, crash, timeout, collection
error in the guest) fails with the guest console's tail.

Budgets follow the work, not the whole boot: the guest says when each test
starts, and the test that is running gets its own budget
(``TESTBED_TEST_BUDGET``, default 1800 s, or ``@pytest.mark.realkernel(budget=S)``
for a longer one), counted from its start; the boot itself (start-up,
collection, between tests, power-off) gets ``TESTBED_BOOT_BUDGET`` (900 s)
from the last thing that happened. A budget that runs out stops the boot and
names the test that was running. A slow machine therefore slows each test,
not a shared clock that the last tests of a long boot pay for. What the host can tell
before booting (no root, an interpreter the guest cannot see) fails every
realkernel test at once with one line saying what to do, and boots nothing. ``pytest -m "not
realkernel"`` boots nothing. Without QEMU on a developer's machine the tests are
skipped with that reason; under CI (``CI`` set) nothing is skipped: a testbed
that cannot boot fails every realkernel test.

Two boots: tests marked ``realkernel`` run in the classic boot (busybox init,
udevd started by hand); tests marked ``realkernel(init="systemd")`` run in one
more boot whose PID 1 is the host's systemd (runner.Init.SYSTEMD). Each kind
boots once per pytest run, only when one of its tests is selected, and never
while the other boot runs (one VM at a time on a small machine). The summary
names the boots that ran.

Inside the guest (``TESTBED=1``) this plugin only writes the reports.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from _pytest.nodes import Node
from _pytest.reports import TestReport

from tests.testbed import runner

REALKERNEL = "realkernel"
#: File in the run share (the guest's /tb) that receives the guest's reports.
REPORTS = "reports.jsonl"
#: Marks whose verdict belongs to the guest; the host's stand-in ignores them.
GUEST_EVALUATED_MARKS = frozenset({"skip", "skipif", "xfail"})
#: Seconds the guest gets to power off after its last report.
POWEROFF_GRACE = 120.0
#: Lines of the guest console shown with a failure the guest did not report.
CONSOLE_TAIL = 80
#: Host directories the guest mounts afresh (guest/init.sh): host files below them are hidden.
GUEST_OWN_MOUNTS = ("/tmp", "/run", "/dev", "/proc", "/sys")
#: The shell's exit code when ``exec`` finds no such program (the guest's command.sh).
NOT_FOUND = 127
#: Seconds one test may run in the guest, from its start (override: realkernel(budget=S)).
TEST_BUDGET = float(os.environ.get("TESTBED_TEST_BUDGET", "1800"))
#: Seconds the boot may go without a test running: start-up, collection, power-off.
BOOT_BUDGET = float(os.environ.get("TESTBED_BOOT_BUDGET", "900"))


def in_guest() -> bool:
    """True inside the testbed VM (the runner sets TESTBED=1)."""
    return os.environ.get("TESTBED") == "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("testbed", "real-kernel testbed VM")
    group.addoption(
        "--testbed-report",
        metavar="PATH",
        help="(inside the testbed) append each test report as a JSON line to PATH",
    )


def pytest_configure(config: pytest.Config) -> None:
    if in_guest():
        path = config.getoption("testbed_report")
        if path:
            config.pluginmanager.register(GuestReportWriter(config, Path(path)), "testbed-reports")
    else:
        config.pluginmanager.register(HostBatch(config), "testbed-batch")


# ---------------------------------------------------------------- inside the guest


class GuestReportWriter:
    """Writes every report the guest's pytest makes, one JSON line each, flushed."""

    def __init__(self, config: pytest.Config, path: Path) -> None:
        self.config = config
        self.file = path.open("a", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record, default=repr) + "\n")
        self.file.flush()

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self._write({"start": nodeid})  # the host's budget for this test starts now

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        self._write({"report": data})

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self._write({"collect_error": report.nodeid, "longrepr": str(report.longrepr)})

    def pytest_sessionfinish(self, exitstatus: int) -> None:
        self._write({"exitstatus": int(exitstatus)})
        self.file.close()


# ---------------------------------------------------------------- on the host


def unavailable(*, qemu: str | None, root: bool, ci: bool) -> tuple[str, bool] | None:
    """Why the testbed cannot run here, and whether that may be a skip.

    A skip is allowed only where QEMU is absent on a developer's own machine;
    in CI the runner installs what is missing, and anything else is a failure.
    """
    if not root:
        return (
            "the testbed VM needs root (9p shares of / and the checkout, apt-get): run pytest "
            "as root, or deselect these tests with -m 'not realkernel'",
            False,
        )
    if qemu is None and not ci:
        return (
            "qemu-system-x86_64 is not installed, so the real-kernel testbed cannot boot: "
            "`bash contrib/install.sh --dev` installs it",
            True,
        )
    return None


def boot_of(item: pytest.Item) -> runner.Init:
    """The boot a realkernel test asks for: ``realkernel(init="systemd")`` or the classic one."""
    mark = item.get_closest_marker(REALKERNEL)
    value = mark.kwargs.get("init", runner.Init.CLASSIC.value) if mark is not None else None
    try:
        return runner.parse_init(str(value))
    except runner.TestbedError as error:
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.realkernel(init=...): {error}"
        ) from None


def budgets_of(items: list[pytest.Item]) -> dict[str, float]:
    """The tests that asked for their own budget: ``realkernel(budget=S)``."""
    out: dict[str, float] = {}
    for item in items:
        mark = item.get_closest_marker(REALKERNEL)
        if mark is not None and "budget" in mark.kwargs:
            out[item.nodeid] = float(mark.kwargs["budget"])
    return out


def boots_line(inits: list[runner.Init]) -> str:
    """The summary's first line: how many boots ran, and which."""
    names = ", ".join(init.value for init in inits)
    return f"testbed: {len(inits)} boot{'s' if len(inits) != 1 else ''} ({names})"


def guest_sees(path: str, checkout: Path) -> bool:
    """Whether the guest sees this host path: the host's root read-only, minus the
    directories it mounts afresh, plus the checkout at its own path."""
    where = PurePosixPath(os.path.normpath(path))
    if where.is_relative_to(checkout):
        return True
    return not any(where.is_relative_to(mount) for mount in GUEST_OWN_MOUNTS)


def use_the_checkouts_venv(checkout: Path) -> str:
    """What the guest can see and what to do: the second half of an interpreter error."""
    return (
        f"the guest sees only the host's root read-only (with its own empty "
        f"{', '.join(GUEST_OWN_MOUNTS)}) and the checkout {checkout}: run pytest with the "
        f"checkout's venv, `bash tests/run.sh` or `.venv/bin/python -m pytest` in {checkout}"
    )


def interpreter_problem(executable: str, needed: list[str], checkout: Path) -> str | None:
    """One line when the guest could not run ``executable`` (or import ``needed`` from it)."""
    hidden = next((path for path in [executable, *needed] if not guest_sees(path, checkout)), None)
    if hidden is None:
        return None
    return (
        f"the testbed guest cannot run {executable} ({hidden} is not visible there); "
        + use_the_checkouts_venv(checkout)
    )


def interpreter_paths() -> list[str]:
    """What the guest's pytest needs of this interpreter: its real file and pytest itself."""
    pytest_dir = os.path.dirname(pytest.__file__)
    return [os.path.realpath(sys.executable), pytest_dir, os.path.realpath(pytest_dir)]


@dataclass
class GuestOutcome:
    """What the guest said about one test."""

    reports: dict[str, TestReport] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return "teardown" in self.reports


@dataclass
class Budgets:
    """How long the boot may go on: the running test's own budget, from its start,
    or the boot's (start-up, collection, power-off) from the last test's end."""

    boot: float = BOOT_BUDGET
    default: float = TEST_BUDGET
    per_test: dict[str, float] = field(default_factory=dict)
    running: str | None = None
    since: float = 0.0

    def started(self, nodeid: str, now: float) -> None:
        self.running, self.since = nodeid, now

    def finished(self, nodeid: str, now: float) -> None:
        if self.running == nodeid:
            self.running, self.since = None, now

    def overrun(self, now: float) -> str | None:
        """The sentence that stops the boot when a budget ran out (None: keep going)."""
        spent = now - self.since
        if self.running is None:
            if spent <= self.boot:
                return None
            return (f"no test was running for {spent:.0f} s (start-up, collection or power-off "
                    f"past TESTBED_BOOT_BUDGET={self.boot:.0f} s)")
        limit = self.per_test.get(self.running, self.default)
        if spent <= limit:
            return None
        return (f"{self.running} ran past its budget of {limit:.0f} s (TESTBED_TEST_BUDGET, or "
                "@pytest.mark.realkernel(budget=S) for a test that needs longer)")


class ReportReader:
    """Turns the guest's JSON lines back into pytest reports, as they arrive."""

    def __init__(self, config: pytest.Config, budgets: Budgets | None = None) -> None:
        self.config = config
        self.outcomes: dict[str, GuestOutcome] = {}
        self.collect_errors: list[str] = []
        self.exitstatus: int | None = None
        self.budgets = budgets or Budgets()
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        """Take more of the file; a last line without its newline waits for the rest."""
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                self._take(json.loads(line))

    def _take(self, record: dict[str, Any]) -> None:
        if "start" in record:
            self.budgets.started(str(record["start"]), time.monotonic())
        elif "report" in record:
            report = self.config.hook.pytest_report_from_serializable(
                config=self.config, data=record["report"]
            )
            if isinstance(report, TestReport):
                # JSON has no tuples; pytest unpacks and asserts on these.
                report.location = tuple(report.location)  # type: ignore[assignment]
                longrepr: Any = report.longrepr
                if isinstance(longrepr, list):
                    report.longrepr = (str(longrepr[0]), int(longrepr[1]), str(longrepr[2]))
                outcome = self.outcomes.setdefault(report.nodeid, GuestOutcome())
                outcome.reports[report.when] = report
                if report.when == "teardown":
                    self.budgets.finished(report.nodeid, time.monotonic())
        elif "collect_error" in record:
            self.collect_errors.append(f"{record['collect_error']}:\n{record['longrepr']}")
        elif "exitstatus" in record:
            self.exitstatus = int(record["exitstatus"])


class GuestRun:
    """The one testbed boot of this pytest run, started by the first GuestItem."""

    def __init__(
        self,
        config: pytest.Config,
        nodeids: list[str],
        init: runner.Init = runner.Init.CLASSIC,
        budgets: dict[str, float] | None = None,
    ) -> None:
        self.config = config
        self.nodeids = nodeids
        self.init = init
        #: The other boots of this pytest run: this one starts only when they ended.
        self.peers: list[GuestRun] = []
        self.reader = ReportReader(config, Budgets(per_test=dict(budgets or {})))
        self._reading = threading.Lock()  # the boot thread's watchdog reads too
        self.tail_shown_with: str | None = None
        for nodeid in nodeids:
            self.reader.outcomes[nodeid] = GuestOutcome()
        self.started = False
        self.skip_reason: str | None = None
        self.problem: str | None = None
        self.result: runner.Result | None = None
        self.run_dir: Path | None = None
        self.options = runner.Options(
            rw_dir=runner.CHECKOUT,
            cwd=config.rootpath,
            env={"TESTBED_UDEV": "background"},
            path_first=[os.path.dirname(sys.executable)],
            init=init,
        )
        self._process: Any = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._offset = 0

    # -- the guest's command

    def guest_command(self) -> list[str]:
        config = self.config
        argv = [
            sys.executable, "-m", "pytest",
            "-p", "no:cacheprovider",
            "--rootdir", str(config.rootpath),
            f"--testbed-report=/tb/{REPORTS}",
            "-v", "--color=no",
            f"--tb={config.option.tbstyle}",
            "-m", REALKERNEL,
        ]  # fmt: skip
        if config.inipath is not None:
            argv += ["-c", str(config.inipath)]
        if config.option.showlocals:
            argv.append("-l")
        return [*argv, *self.nodeids]

    # -- lifecycle

    def start(self, nodeid: str) -> None:
        """Boot (in a thread) unless already done; ``nodeid``: the test that asks."""
        if self.started:
            return
        self.started = True
        reason = unavailable(
            qemu=shutil.which("qemu-system-x86_64"),
            root=os.geteuid() == 0,
            ci=bool(os.environ.get("CI")),
        )
        problem = interpreter_problem(sys.executable, interpreter_paths(), runner.CHECKOUT)
        if problem is not None and (reason is None or reason[1]):
            reason = (problem, False)  # no root is said first; a missing QEMU is not
        if reason is not None:
            message, may_skip = reason
            if may_skip:
                self.skip_reason = message
            else:
                self.problem = message
            self._done.set()
            return
        for peer in self.peers:  # one VM at a time: a peer's boot ends by itself (timeout)
            peer.wait_ended()
        try:
            prepared = runner.prepare(self.options)
        except Exception as error:  # every realkernel test fails with it, none waits
            self.problem = f"testbed set-up failed: {type(error).__name__}: {error}"
            self._done.set()
            return
        self.run_dir = runner.new_run_dir(self.options.cache)
        self._say(
            f"testbed: booting the real-kernel VM ({self.init.value}) for "
            f"{len(self.nodeids)} realkernel test(s), "
            f"console {self.run_dir / 'console.log'}",
            resume=nodeid,
        )
        self._thread = threading.Thread(
            target=self._boot, args=(prepared,), name="testbed", daemon=True
        )
        self._thread.start()

    def _boot(self, prepared: runner.Prepared) -> None:
        try:
            self.result = runner.boot(
                self.guest_command(),
                self.options,
                prepared,
                run_dir=self.run_dir,
                on_start=self._started,
                watchdog=self.watchdog,
            )
        except Exception as error:  # reported as every unreported test's failure
            self.problem = f"testbed boot failed: {type(error).__name__}: {error}"
        finally:
            self._done.set()

    def _started(self, process: Any) -> None:
        self._process = process
        self.reader.budgets.since = time.monotonic()  # the boot's budget starts with QEMU

    def watchdog(self) -> str | None:
        """Asked by the runner while the guest runs: why to stop it now (None: go on)."""
        self._read_reports()
        return self.reader.budgets.overrun(time.monotonic())

    def wait_ended(self) -> None:
        """Until this boot has ended, if it was started (bounded by the runner's timeout)."""
        if self.started:
            self._done.wait()

    def close(self, *, interrupted: bool) -> None:
        """Never leave a QEMU behind.

        After the last report the guest still writes its exit code and powers
        off: give it that (bounded) unless the run was interrupted.
        """
        if not interrupted:
            self._done.wait(POWEROFF_GRACE)
        process = self._process
        if process is not None:
            runner.stop(process)
        if self._thread is not None:
            self._thread.join(runner.KILL_GRACE * 2)

    # -- reports

    def _read_reports(self) -> None:
        if self.run_dir is None:
            return
        with self._reading:
            try:
                with (self.run_dir / REPORTS).open("rb") as handle:
                    handle.seek(self._offset)
                    chunk = handle.read()
            except FileNotFoundError:
                return
            self._offset += len(chunk)
            self.reader.feed(chunk)

    @property
    def outcomes(self) -> dict[str, GuestOutcome]:
        return self.reader.outcomes

    def outcome(self, nodeid: str) -> GuestOutcome:
        """Wait until the guest finished this test (or the boot ended), then return it.

        The file is polled; the wait is bounded by the runner's timeout, after
        which the runner kills QEMU and the boot ends.
        """
        self.start(nodeid)
        while True:
            self._read_reports()
            outcome = self.outcomes.setdefault(nodeid, GuestOutcome())
            if outcome.complete or self._done.is_set():
                if self._done.is_set():
                    self._read_reports()
                return outcome
            self._done.wait(0.2)

    def why_missing(self, nodeid: str) -> str:
        """The failure text of a test the guest never (fully) reported."""
        if self.problem and self.run_dir is None:
            return self.problem  # found before booting: one line says it all
        parts = [f"the testbed guest did not report {nodeid}"]
        if self.problem:
            parts.append(self.problem)
        result = self.result
        if result is not None and result.returncode == NOT_FOUND and self.reader.exitstatus is None:
            parts.insert(
                0,
                f"testbed: the guest could not start {sys.executable} (exit {NOT_FOUND}: "
                "not found there); " + use_the_checkouts_venv(runner.CHECKOUT),
            )
        if result is not None:
            parts.append(f"testbed: {runner.describe(result)}")
            if result.timed_out:
                parts.append(f"the guest was stopped: {result.timeout_reason}")
        if self.reader.exitstatus is not None:
            parts.append(f"guest pytest exit status: {self.reader.exitstatus}")
        if self.reader.collect_errors:
            errors = "\n".join(self.reader.collect_errors)
            parts.append(f"collection errors in the guest:\n{errors}")
        if self.run_dir is not None:
            console = self.run_dir / "console.log"
            parts.append(f"console: {console}")
            if self.tail_shown_with is not None:
                parts.append(f"(the console's tail is shown with {self.tail_shown_with})")
                return "\n".join(parts)
            self.tail_shown_with = nodeid
            with suppress(OSError):
                tail = console.read_text(errors="replace").splitlines()[-CONSOLE_TAIL:]
                parts.append("---- guest console (tail) ----\n" + "\n".join(tail))
        return "\n".join(parts)

    # -- terminal

    @contextmanager
    def _uncaptured(self) -> Iterator[None]:
        capture = self.config.pluginmanager.getplugin("capturemanager")
        if capture is None:
            yield
            return
        with capture.global_and_fixture_disabled():
            yield

    def _say(self, line: str, resume: str) -> None:
        """A line of its own in the progress output, then the progress line of ``resume``."""
        reporter = self.config.pluginmanager.getplugin("terminalreporter")
        if reporter is None:
            return
        with self._uncaptured():
            reporter.ensure_newline()
            reporter.write_line(line)
            if self.config.get_verbosity() <= 0:
                reporter.write_fspath_result(resume, "")

    def summary(self) -> str | None:
        if self.skip_reason:
            return f"testbed: realkernel tests skipped: {self.skip_reason}"
        if self.problem and self.result is None:
            return f"testbed: {self.problem}"
        result = self.result
        if result is None:
            return None
        guest_pytest = (
            result.vm_seconds - result.command_start_seconds
            if result.command_start_seconds is not None
            else None
        )
        text = (
            f"testbed: {self.init.value} boot, {len(self.nodeids)} realkernel test(s): "
            f"{runner.describe(result)}"
        )
        if guest_pytest is not None:
            text += f" guest-pytest+poweroff={guest_pytest:.1f}s"
        return text


class GuestItem(pytest.Item):
    """Stands in on the host for one realkernel test run by the guest."""

    def __init__(self, *, original: pytest.Item, run: GuestRun, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.original = original
        self.run = run
        self.own_markers = list(original.own_markers)
        self.keywords.update(original.keywords)
        self.guest: GuestOutcome | None = None

    def reportinfo(self) -> tuple[os.PathLike[str] | str, int | None, str]:
        return self.original.reportinfo()

    def iter_markers_with_node(self, name: str | None = None) -> Iterator[tuple[Node, pytest.Mark]]:
        """The test's marks, minus those the guest evaluates (skip, skipif, xfail).

        A ``skipif(no IOMMU)`` is true on the host and false in the guest: only
        the guest's verdict counts, and it arrives with the guest's reports.
        """
        for node, mark in super().iter_markers_with_node(name):
            if mark.name not in GUEST_EVALUATED_MARKS:
                yield node, mark

    def setup(self) -> None:
        self.guest = self.run.outcome(self.nodeid)
        if self.run.skip_reason:
            pytest.skip(self.run.skip_reason)

    def runtest(self) -> None:
        if self.guest is None or "call" not in self.guest.reports:
            pytest.fail(self.run.why_missing(self.nodeid), pytrace=False)


class HostBatch:
    """Host-side hooks: batch the realkernel items into one guest run per boot kind."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.runs: dict[runner.Init, GuestRun] = {}
        self.started_at = time.monotonic()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        chosen = [item for item in items if item.get_closest_marker(REALKERNEL)]
        if not chosen:
            return
        groups: dict[runner.Init, list[pytest.Item]] = {}
        for item in chosen:
            groups.setdefault(boot_of(item), []).append(item)
        self.runs = {
            init: GuestRun(config, [item.nodeid for item in group], init, budgets_of(group))
            for init, group in groups.items()
        }
        for run in self.runs.values():
            run.peers = [peer for peer in self.runs.values() if peer is not run]
        replacement: dict[int, pytest.Item] = {}
        for init, group in groups.items():
            for item in group:
                assert item.parent is not None  # a collected test always has one
                replacement[id(item)] = GuestItem.from_parent(
                    item.parent, name=item.name, original=item, run=self.runs[init]
                )
        items[:] = [replacement.get(id(item), item) for item in items]

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, TestReport, TestReport]:
        report = yield
        if not isinstance(item, GuestItem) or item.guest is None:
            return report
        guest_report = item.guest.reports.get(call.when)
        if guest_report is not None:
            return guest_report
        if report.skipped and isinstance(report.longrepr, tuple):
            path, lineno, _ = item.location
            report.longrepr = (path, (lineno or 0) + 1, report.longrepr[2])
        return report

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        booted = [init for init, run in self.runs.items() if run.result is not None]
        if booted:
            terminalreporter.write_line(boots_line(booted))
        for run in self.runs.values():
            line = run.summary()
            if line:
                terminalreporter.write_line(line)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        for run in self.runs.values():
            # Stopped early (Ctrl-C, -x): the guest may still be running tests; kill it.
            finished = all(outcome.complete for outcome in run.outcomes.values())
            run.close(interrupted=exitstatus == pytest.ExitCode.INTERRUPTED or not finished)
            result = run.result
            failed = any(
                not outcome.complete or any(r.failed for r in outcome.reports.values())
                for outcome in run.outcomes.values()
            )
            if result is not None and not failed and result.returncode == 0:
                runner.cleanup(result, run.options.keep)

    def pytest_unconfigure(self) -> None:
        for run in self.runs.values():
            run.close(interrupted=True)
