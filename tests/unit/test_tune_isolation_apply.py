"""cpu.isolate applied: QEMU's scope verified, host units confined journaled first, undone.

The fake systemd (:class:`FakeSystemd`) is the recorded command runner:
``systemctl show -p AllowedCPUs --value UNIT`` and ``systemctl set-property
--runtime UNIT AllowedCPUs=V`` as systemd 252 answers them, writing
``cpuset.cpus`` in a fake /sys/fs/cgroup the way systemd does: only while the
unit asks for CPUs (unsetting leaves the file as it was when a sibling keeps
the cpuset controller on). Each call is recorded with the tuning journal as
it was then, which is how "journaled before it is made" is checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from handoff import journal as jr
from handoff.base.errors import IsolationRefusedError, SystemdError, TuneError
from handoff.base.host import HostPaths
from handoff.base.systemctl import Ran
from handoff.profile import parse_profile
from handoff.session.plan import ChangeKind, plan_session
from handoff.tune.isolation import plan_isolation, scope_argv
from handoff.tune.recovery import recover_tuning, tune_journal_name
from handoff.tune.resource import TuneResource
from handoff.tune.settings import Systemd
from tests.unit.test_tune_plan import facts, ryzen
from tests.unit.test_tune_resource import (
    PROFILE,
    QEMU_PID,
    FakeVm,
    TuneKernel,
    fake_setaffinity,
    host,
    journaled_settings,
    planned_tuning,
    pool,
)

ISOLATED = PROFILE.replace("[cpu]", "[cpu]\nisolate = true")
UNITS = ("system.slice", "user.slice", "init.scope")
SCOPE = "machine.slice/handoff-tuned-qemu.scope"


class FakeSystemd:
    """systemctl show / set-property against a fake cgroup tree, each call recorded."""

    def __init__(self, paths: HostPaths, *, fail_on: str | None = None) -> None:
        self.paths = paths
        self.root = paths.sys / "fs/cgroup"
        self.props: dict[str, str] = {}
        self.calls: list[tuple[tuple[str, ...], list[dict[str, object]]]] = []
        self.fail_on = fail_on
        self.running: set[str] = set()  # units active already

    def __call__(self, argv: Sequence[str]) -> Ran:
        argv = tuple(argv)
        self.calls.append((argv, journaled_settings(self.paths)))
        if argv[:5] == ("systemctl", "show", "-p", "AllowedCPUs", "--value"):
            return Ran(0, self.props.get(argv[5], "") + "\n")
        if argv[:5] == ("systemctl", "show", "-p", "ActiveState", "--value"):
            return Ran(0, ("active" if argv[5] in self.running else "inactive") + "\n")
        assert argv[:3] == ("systemctl", "set-property", "--runtime"), argv
        unit, value = argv[3], argv[4].removeprefix("AllowedCPUs=")
        if unit == self.fail_on:
            return Ran(1, "", "Failed to set unit properties: Access denied\n")
        self.props[unit] = value
        if value and (self.root / unit).is_dir():
            (self.root / unit / "cpuset.cpus").write_text(value + "\n")
        return Ran(0, "")

    @property
    def sets(self) -> list[tuple[str, str]]:
        return [(a[3], a[4]) for a, _ in self.calls if a[1] == "set-property"]


def systemd_host(tmp_path: Path, *, qemu_cgroup: str = SCOPE, scope_cpus: str = "0-3") -> HostPaths:
    """4 single-thread cores under systemd on cgroup v2; QEMU (paused) in ``qemu_cgroup``."""
    paths = host(tmp_path)
    (paths.proc / "1").mkdir(parents=True)
    (paths.proc / "1/comm").write_text("systemd\n")
    cgroup = paths.sys / "fs/cgroup"
    for unit in ("system.slice", "init.scope", SCOPE):  # user.slice: nobody logged in
        (cgroup / unit).mkdir(parents=True)
    (cgroup / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (cgroup / SCOPE / "cpuset.cpus").write_text(scope_cpus + "\n")
    (paths.proc / str(QEMU_PID) / "cgroup").write_text(f"0::/{qemu_cgroup}\n")
    return paths


def isolated(paths: HostPaths, fake: FakeSystemd, text: str = ISOLATED) -> TuneResource:
    profile = parse_profile(text, Path("/etc/handoff/tuned.toml"))
    calls: list[tuple[int, frozenset[int]]] = []
    lines: list[str] = []
    res = TuneResource(
        profile, paths, planned_tuning(profile, paths), writer=TuneKernel(paths), runner=fake,
        report=lines.append,
        setaffinity=fake_setaffinity(paths, calls),
    )  # fmt: skip
    res.lines = lines  # type: ignore[attr-defined]
    res.pins = calls  # type: ignore[attr-defined]
    return res


def start(res: TuneResource) -> None:
    async def run() -> None:
        await res.acquire()
        res.note_qemu_pid(QEMU_PID)
        await res.vm_started(FakeVm(), None, None)  # type: ignore[arg-type]  # uses neither

    trio.run(run)


def cpuset(paths: HostPaths, unit: str) -> str:
    return (paths.sys / "fs/cgroup" / unit / "cpuset.cpus").read_text().strip()


def test_each_host_unit_is_confined_journaled_first_verified_and_restored_in_reverse(
    tmp_path: Path,
) -> None:
    paths = systemd_host(tmp_path)
    fake = FakeSystemd(paths)
    res = isolated(paths, fake)
    start(res)
    # auto on 4 single-thread cores: vCPUs on 1 and 2, the host keeps 0 and 3.
    assert fake.sets == [(u, "AllowedCPUs=0,3") for u in UNITS]
    for argv, journaled in fake.calls:
        if argv[1] == "set-property":
            record = next(r for r in journaled if r["target"] == argv[3])
            assert record["kind"] == "allowed-cpus"
            assert record["previous"] == ""
    assert cpuset(paths, "system.slice") == "0,3"
    assert cpuset(paths, "init.scope") == "0,3"
    status = res.status()
    assert status["isolated_units"] == [{"unit": u, "allowed_cpus": "0,3"} for u in UNITS]
    assert status["qemu_scope"] == SCOPE
    assert status["qemu_scope_cpus"] == "0-3"
    assert isinstance(status["isolate_seconds"], float)
    assert "isolated: system.slice, user.slice, init.scope on CPUs 0,3; QEMU in " \
        "handoff-tuned-qemu.scope on CPUs 0-3" in res.lines  # type: ignore[attr-defined]
    assert res.pins  # type: ignore[attr-defined]  # pinned after the units were confined
    fake.calls.clear()
    trio.run(res.release)
    # Newest first; an unset value goes through every online CPU, then unset.
    assert fake.sets == [
        (u, v) for unit in reversed(UNITS) for u, v in ((unit, "AllowedCPUs=0-3"),
                                                          (unit, "AllowedCPUs="))
    ]
    assert all(fake.props[u] == "" for u in UNITS)
    assert cpuset(paths, "system.slice") == "0-3"  # every CPU: not confined any more
    assert not jr.journal_path(paths, tune_journal_name("tuned")).exists()
    assert pool(paths) == 3


def test_a_unit_still_holding_the_host_cpus_after_restore_is_a_failure_left_in_the_journal(
    tmp_path: Path,
) -> None:
    paths = systemd_host(tmp_path)
    fake = FakeSystemd(paths)
    res = isolated(paths, fake)
    start(res)
    fake.fail_on = "init.scope"
    with pytest.raises(TuneError, match="could not restore every host setting"):
        trio.run(res.release)
    left = jr.Journal.load(jr.journal_path(paths, tune_journal_name("tuned")))
    assert [r.target for r in left.settings] == ["init.scope"]
    assert fake.props["system.slice"] == ""  # the others were restored regardless


def test_qemu_outside_its_scope_is_refused_before_any_unit_is_touched(tmp_path: Path) -> None:
    paths = systemd_host(tmp_path, qemu_cgroup="system.slice/handoff.service")
    fake = FakeSystemd(paths)
    res = isolated(paths, fake)
    with pytest.raises(IsolationRefusedError, match=r"not in its scope handoff-tuned-qemu\.scope"):
        start(res)
    assert fake.sets == []
    assert res.pins == []  # type: ignore[attr-defined]
    trio.run(res.release)
    assert pool(paths) == 3
    assert not jr.journal_path(paths, tune_journal_name("tuned")).exists()


def test_a_taken_scope_name_is_refused_before_anything_changes(tmp_path: Path) -> None:
    paths = systemd_host(tmp_path)
    fake = FakeSystemd(paths)
    fake.running.add("handoff-tuned-qemu.scope")
    res = isolated(paths, fake)
    with pytest.raises(IsolationRefusedError, match="another QEMU of profile tuned still runs"):
        trio.run(res.acquire)
    assert fake.sets == []
    assert res.writer.writes == []  # type: ignore[attr-defined]  # no pool raised
    assert pool(paths) == 3


def test_a_scope_without_the_vms_cpus_is_refused(tmp_path: Path) -> None:
    paths = systemd_host(tmp_path, scope_cpus="0")
    fake = FakeSystemd(paths)
    with pytest.raises(IsolationRefusedError, match="has CPUs 0, the plan gives it 0-3"):
        start(isolated(paths, fake))
    assert fake.sets == []


def test_a_failed_confinement_is_undone_by_release(tmp_path: Path) -> None:
    paths = systemd_host(tmp_path)
    fake = FakeSystemd(paths, fail_on="user.slice")
    res = isolated(paths, fake)
    with pytest.raises(SystemdError, match="Access denied") as caught:
        start(res)
    assert caught.value.argv[:4] == ("systemctl", "set-property", "--runtime", "user.slice")
    assert caught.value.status == 1
    assert fake.props["system.slice"] == "0,3"
    fake.fail_on = None
    trio.run(res.release)
    assert all(fake.props.get(u, "") == "" for u in UNITS)
    assert not jr.journal_path(paths, tune_journal_name("tuned")).exists()


def test_recover_leaves_the_units_while_qemu_runs_and_restores_them_after(
    tmp_path: Path,
) -> None:
    paths = systemd_host(tmp_path)
    fake = FakeSystemd(paths)
    res = isolated(paths, fake)
    start(res)
    assert res._locks is not None
    res._locks.release()  # the supervisor is SIGKILLed: its flock goes, no release
    path = jr.journal_path(paths, tune_journal_name("tuned"))
    report = trio.run(lambda: recover_tuning(paths, TuneKernel(paths), Systemd(paths, fake)))
    assert not report.ok
    assert f"its QEMU (pid {QEMU_PID}) is still running" in report.refused[0]
    assert fake.props["system.slice"] == "0,3"
    for task in (paths.proc / str(QEMU_PID)).rglob("*"):  # QEMU exits
        if task.is_file():
            task.unlink()
    for d in sorted((paths.proc / str(QEMU_PID)).rglob("*"), reverse=True):
        d.rmdir()
    (paths.proc / str(QEMU_PID)).rmdir()
    report = trio.run(lambda: recover_tuning(paths, TuneKernel(paths), Systemd(paths, fake)))
    assert report.ok, report.lines()
    assert "system.slice's AllowedCPUs back to (unset: every CPU)" in report.returned
    assert all(fake.props[u] == "" for u in UNITS)
    assert pool(paths) == 3
    assert not path.exists()


# --------------------------------------------------------------------------- the argv


def test_the_scope_wrapper_names_the_unit_slice_and_cpus_and_ends_before_qemu() -> None:
    iso = plan_isolation(frozenset(range(8)), frozenset({4, 5}), frozenset({0, 1, 2, 3}))
    argv = scope_argv("win", iso, ("qemu-system-x86_64", "-S"), user="qemu")
    assert argv == (
        "systemd-run", "--scope", "--quiet", "--collect", "--unit=handoff-win-qemu",
        "--slice=machine.slice", "--property=AllowedCPUs=0-5", "--uid=qemu", "--",
        "qemu-system-x86_64", "-S",
    )  # fmt: skip
    assert argv[argv.index("--") + 1 :] == ("qemu-system-x86_64", "-S")


def test_the_plan_starts_qemu_in_its_scope_and_confines_the_units_after() -> None:
    host = ryzen()
    tuning = host.tuning
    assert tuning is not None
    from dataclasses import replace

    systemd = facts(replace(tuning, init_system="systemd", cgroup2=True))
    text = ISOLATED.replace('memory = "64M"', 'memory = "64M"\ncores = 1\nthreads = 2')
    p = plan_session(parse_profile(text, Path("/etc/handoff/tuned.toml")), systemd, HostPaths())
    assert p.scoped
    assert p.argv[:2] == ("systemd-run", "--scope")
    assert p.argv[p.argv.index("--") + 1] == "qemu-system-x86_64"
    assert p.argv_with_monitor_fd(7)[0] == "systemd-run"
    kinds = [c.kind for c in p.changes]
    assert kinds.index(ChangeKind.QEMU_SCOPE) < kinds.index(ChangeKind.ISOLATE_HOST)
    assert kinds.index(ChangeKind.ISOLATE_HOST) < kinds.index(ChangeKind.PIN_VCPUS)
    confined = [c.target for c in p.changes if c.kind is ChangeKind.ISOLATE_HOST]
    assert confined == list(UNITS)
