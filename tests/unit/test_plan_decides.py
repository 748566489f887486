"""The session plan decides, the resources execute (issue: one plan, one host read).

``handoff run`` reads the host once (:func:`handoff.session.host_facts.gather_host_facts`),
plans the session from those facts, and builds its resources *from the plan*:
the tuning resource applies the plan's own :class:`~handoff.tune.plan.TunePlan`
(the hugepage targets and governors decided from the facts the plan used)
instead of reading the host and planning again; doctor's tuning verdicts are
the parts of the same attempt the plan raises from.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

import handoff.tune.topology as topology
from handoff.base.errors import PinningRefusedError
from handoff.base.host import HostPaths
from handoff.checks import DoctorEnv, Verdict
from handoff.checks.tune import check_tuning
from handoff.profile import Accelerator, parse_profile
from handoff.session.host_facts import gather_host_facts
from handoff.session.plan import HostFacts, plan_session
from handoff.session.start import default_resources
from handoff.tune.plan import plan_tuning
from handoff.tune.resource import TuneResource
from tests.unit.test_tune_resource import PROFILE, TuneKernel, host, pool

SOURCE = Path("/etc/handoff/tuned.toml")


def test_the_tuning_resource_applies_the_plans_tuning_from_one_host_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = host(tmp_path)
    reads: list[HostPaths] = []
    real = topology.read_host

    def counted(where: HostPaths) -> object:
        reads.append(where)
        return real(where)

    monkeypatch.setattr(topology, "read_host", counted)
    profile = parse_profile(PROFILE, SOURCE)
    plan = plan_session(profile, gather_host_facts(profile, paths, strict=False), paths)
    (tune,) = [r for r in default_resources(plan, paths, report=lambda _: None)
               if isinstance(r, TuneResource)]
    tune.writer = TuneKernel(paths)
    trio.run(tune.acquire)
    try:
        assert tune.plan is plan.tune  # applied as planned, not planned again
        assert len(reads) == 1  # the facts the plan used are the facts the resource acted on
        assert pool(paths) == 32
    finally:
        trio.run(tune.release)
    assert pool(paths) == 3


def test_the_printed_argv_is_the_run_argv_with_only_the_qmp_fd_filled_in(tmp_path: Path) -> None:
    profile = parse_profile(PROFILE, SOURCE)
    paths = host(tmp_path)
    facts = HostFacts(Accelerator.TCG, "", os.geteuid(), tuning=topology.read_host(paths))
    plan = plan_session(profile, facts, paths)
    ran = plan.argv_with_monitor_fd(42)
    differ = [i for i, (a, b) in enumerate(zip(ran, plan.argv, strict=True)) if a != b]
    assert differ == [plan.argv.index("socket,id=qmp,fd=3")]
    assert ran[differ[0]] == "socket,id=qmp,fd=42"


def test_doctor_refuses_a_pinning_with_the_words_the_plan_refuses_it_with(tmp_path: Path) -> None:
    paths = host(tmp_path)
    profile = parse_profile(PROFILE.replace("cpus = 2", "cpus = 4"), SOURCE)
    tuning = topology.read_host(paths)
    with pytest.raises(PinningRefusedError) as refused:
        plan_tuning(profile.cpu, profile.memory, profile.vm, tuning)
    env = DoctorEnv(host=paths)
    (pinning,) = [c for c in check_tuning(env, profile, tuning) if c.name == "cpu-pinning"]
    assert pinning.verdict is Verdict.FAIL
    assert pinning.detail.endswith(refused.value.message)
