"""Session start with pinning + 2M hugepages for 1 GiB, against the same session without.

Both arms run a real in-process ``Session`` with its default resources, on
the same 1 GiB, 1-vCPU TCG profile, round after round, interleaved so load
on the machine hits both alike; each is timed from ``Session.run()`` to the
``running`` line (the guest resumed after ``cont``), then stopped:

``plain``
    no ``[cpu]``/``[memory]``: nothing but the session.

``tuned``
    ``pin = "auto"`` (on a 2-CPU host: vCPU on CPU 1, emulator on CPU 0) and
    ``hugepages = "2M"``: the tuning resource raises the
    pool (512 pages, journaled), QEMU preallocates its RAM from the pool,
    and after QMP connects every thread is pinned and verified.

What the added time is made of, per tuned round: raising the pool (and
compacting memory, only when the first raise falls short) and pinning (the
resource's own timings, from its status), and ``prealloc``: QEMU faulting in
1 GiB of hugetlb pages before its monitor answers, measured in the session
as QEMU's spawn-to-QMP time, tuned minus plain, and cross-checked with bare
QEMU to QMP-ready with the backend (pool raised beforehand) minus without.
The goal (issue 12): tuned minus prealloc <= 1.2x plain; prealloc is
reported apart.

Needs root (the pool is a kernel setting) and 1 GiB free for the pool.

    .venv/bin/python bench/tune.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from startup import bare_round

from handoff.base.host import HostPaths
from handoff.profile import Accelerator, Profile, parse_profile
from handoff.session.end import StopRequest
from handoff.session.plan import SessionPlan
from handoff.session.resources import HostResource
from handoff.session.supervisor import Session, default_resources

POOL = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
PAGES = 512  # 1 GiB of 2 MiB pages
BASE = """\
[vm]
name = "bench-{name}"
memory = "1G"
cpus = 1
accel = "tcg"
shutdown_timeout = 1
[display]
vga = "none"
frontend = "none"
"""
TUNING = """\
[cpu]
pin = "auto"
[memory]
hugepages = "2M"
"""


def profile(name: str, tuned: bool) -> Profile:
    text = BASE.format(name=name) + (TUNING if tuned else "")
    return parse_profile(text, Path(f"/tmp/bench-{name}.toml"))


@dataclass(frozen=True)
class Round:
    total: float  # Session.run() -> the running line
    spawn_to_qmp: float  # "QEMU started" -> "QMP connected": QEMU's own start, prealloc included
    status: dict[str, Any]  # the tuning resource's status (empty for the plain arm)


def session_round(p: Profile, paths: HostPaths) -> Round:
    """One session from Session.run() to the running line, then a forced stop."""
    marks: dict[str, float] = {}
    built: list[HostResource] = []

    def resources(plan: SessionPlan) -> list[HostResource]:
        built.extend(default_resources(plan, paths, report=lambda _: None))
        return built

    async def main() -> None:
        def report(line: str) -> None:
            for key in ("QEMU started", "QMP connected", "running"):
                if line.startswith(key):
                    marks[key] = time.perf_counter()
            if line.startswith("running"):
                session.request_stop(StopRequest("control"), force=True)

        session = Session(p, paths, resources, report=report, handle_signals=False)
        marks["start"] = time.perf_counter()
        outcome = await session.run()
        assert outcome.status == 0, outcome

    trio.run(main)
    return Round(
        marks["running"] - marks["start"],
        marks["QMP connected"] - marks["QEMU started"],
        built[0].status() if built else {},
    )


def bare_prealloc(plain: Profile, tuned: Profile, paths: HostPaths) -> float:
    """Cross-check: bare QEMU to QMP-ready with the hugetlb backend minus without it."""
    before = int(POOL.read_text())
    POOL.write_text(str(before + PAGES))
    try:
        if int(POOL.read_text()) < before + PAGES:
            raise SystemExit(f"the kernel could not give {PAGES} 2M pages: free some memory")
        with_backend = bare_round(tuned, paths, Accelerator.TCG)
    finally:
        POOL.write_text(str(before))
    return with_backend - bare_round(plain, paths, Accelerator.TCG)


def line(label: str, values: list[float], base: list[float] | None = None, goal: str = "") -> str:
    med, best = statistics.median(values), min(values)
    text = f"  {label:<34} {med * 1000:8.1f} | {best * 1000:7.1f} ms"
    if base:
        text += f"   ratio {med / statistics.median(base):.2f}x | {best / min(base):.2f}x"
        text += f" (goal <= {goal})" if goal else ""
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/tune.py needs root: it raises the hugepage pool", file=sys.stderr)
        return 2
    plain, tuned = profile("plain", False), profile("tuned", True)
    before = int(POOL.read_text())
    # The run directory on tmpfs, like the default /run/handoff: there a journal
    # save is a rename, not an fsync (handoff.journal.store.volatile).
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="handoff-bench-", dir=shm) as tmp:
        paths = HostPaths(run=Path(tmp) / "run")
        session_round(plain, paths)  # warms the capability probe for both arms
        session_round(tuned, paths)  # the pool's first use zeroes fresh pages: not a start
        plain_r: list[Round] = []
        tuned_r: list[Round] = []
        bare: list[float] = []
        for _ in range(args.rounds):
            plain_r.append(session_round(plain, paths))
            tuned_r.append(session_round(tuned, paths))
            bare.append(bare_prealloc(plain, tuned, paths))
    assert int(POOL.read_text()) == before, "the pool did not return to its value"
    load = os.getloadavg()
    med = statistics.median
    plain_s = [r.total for r in plain_r]
    tuned_s = [r.total for r in tuned_r]
    prealloc = med([r.spawn_to_qmp for r in tuned_r]) - med([r.spawn_to_qmp for r in plain_r])
    print(f"1 GiB guest, TCG, {args.rounds} rounds (median | best), load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; pool back to {before}")
    print(line("plain session → running", plain_s))
    print(line("tuned session → running", tuned_s, plain_s))
    without = med(tuned_s) - prealloc
    print(f"  {'tuned minus prealloc (medians)':<34} {without * 1000:8.1f} ms"
          f"          ratio {without / med(plain_s):.2f}x (goal <= 1.2x)")
    print(line("  raising the pool", [float(r.status["raise_seconds"]) for r in tuned_r]))
    print(line("  compact_memory (only when short)",
               [float(r.status["compact_seconds"] or 0.0) for r in tuned_r]))
    print(line("  pinning (QMP + /proc)", [float(r.status["pin_seconds"]) for r in tuned_r]))
    print(f"  {'prealloc of 1 GiB (in the session)':<34} {prealloc * 1000:8.1f} ms   "
          "(QEMU spawn -> QMP, tuned minus plain, medians)")
    print(line("prealloc, bare QEMU cross-check", bare))
    return 0


if __name__ == "__main__":
    sys.exit(main())
