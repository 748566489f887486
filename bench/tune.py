"""Session start with pinning + 2M hugepages for 1 GiB, against the same session without.

Both arms run a real in-process ``Session`` with its default resources, on
the same 1 GiB, 1-vCPU TCG profile, round after round, interleaved so load
on the machine hits both alike; each is timed from ``Session.run()`` to the
``running`` line (the guest resumed after ``cont``), then stopped:

``plain``
    no ``[cpu]``/``[memory]``: nothing but the session.

``tuned``
    ``pin = "auto"`` (on a 2-CPU host: vCPU on CPU 1, emulator on CPU 0) and
    ``hugepages = "2M"``: the tuning resource compacts memory and raises the
    pool (512 pages, journaled), QEMU preallocates its RAM from the pool,
    and after QMP connects every thread is pinned and verified.

What the added time is made of, per tuned round: ``compact`` and ``raise``
(the resource's own timings, from its status), and ``prealloc``: QEMU
faulting in 1 GiB of hugetlb pages before its monitor answers, measured as
bare QEMU to QMP-ready with the hugetlb backend (pool raised beforehand)
minus bare QEMU without it. The goal (issue 12): tuned minus prealloc
<= 1.2x plain; prealloc is reported apart.

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
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from startup import bare_round

from handoff.host import HostPaths
from handoff.profile import Profile, parse_profile
from handoff.session import Session, default_resources
from handoff.session_end import StopRequest

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


def session_round(p: Profile, paths: HostPaths) -> tuple[float, dict[str, Any]]:
    """Seconds from Session.run() to the running line; the tuning resource's status."""
    marks: list[float] = []
    resources = default_resources(p, paths, report=lambda _: None)

    async def main() -> None:
        def report(line: str) -> None:
            if line.startswith("running"):
                marks.append(time.perf_counter())
                session.request_stop(StopRequest("control"), force=True)

        session = Session(p, paths, resources, report=report, handle_signals=False)
        marks.append(time.perf_counter())
        outcome = await session.run()
        assert outcome.status == 0, outcome

    trio.run(main)
    status = resources[0].status() if resources else {}
    return marks[1] - marks[0], status


def prealloc_round(plain: Profile, tuned: Profile, paths: HostPaths) -> float:
    """Bare QEMU to QMP-ready with the hugetlb backend minus without it (pool raised here)."""
    before = int(POOL.read_text())
    POOL.write_text(str(before + PAGES))
    try:
        if int(POOL.read_text()) < before + PAGES:
            raise SystemExit(f"the kernel could not give {PAGES} 2M pages: free some memory")
        with_backend = bare_round(tuned, paths, "tcg")
    finally:
        POOL.write_text(str(before))
    return with_backend - bare_round(plain, paths, "tcg")


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
    with tempfile.TemporaryDirectory(prefix="handoff-bench-") as tmp:
        paths = HostPaths(run=Path(tmp) / "run")
        session_round(plain, paths)  # warms the capability probe for both arms
        plain_s: list[float] = []
        tuned_s: list[float] = []
        compact: list[float] = []
        raised: list[float] = []
        pinned: list[float] = []
        prealloc: list[float] = []
        for _ in range(args.rounds):
            plain_s.append(session_round(plain, paths)[0])
            seconds, status = session_round(tuned, paths)
            tuned_s.append(seconds)
            compact.append(float(status["compact_seconds"] or 0.0))
            raised.append(float(status["raise_seconds"]))
            pinned.append(float(status["pin_seconds"]))
            prealloc.append(prealloc_round(plain, tuned, paths))
    assert int(POOL.read_text()) == before, "the pool did not return to its value"
    load = os.getloadavg()
    print(f"1 GiB guest, TCG, {args.rounds} rounds (median | best), load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; pool back to {before}")
    print(line("plain session → running", plain_s))
    print(line("tuned session → running", tuned_s, plain_s))
    without = statistics.median(tuned_s) - statistics.median(prealloc)
    print(f"  {'tuned minus prealloc (medians)':<34} {without * 1000:8.1f} ms"
          f"          ratio {without / statistics.median(plain_s):.2f}x (goal <= 1.2x)")
    print(line("  of which compact_memory", compact))
    print(line("  of which raising the pool", raised))
    print(line("  of which pinning (QMP + /proc)", pinned))
    print(line("prealloc of 1 GiB (bare QEMU)", prealloc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
