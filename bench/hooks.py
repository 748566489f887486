"""A switch's own time with a slow ``[[hook]]`` against the same switch without hooks.

Two real sessions (`handoff run`, TCG, firmware only, the qmp input backend
with no device to grab, so a switch completes at once) run side by side:
``plain`` has no hooks; ``hooked`` has, on both ``guest`` and ``host``, a
hook that sleeps past its 2 s timeout (killed each time) and a second one
queued behind it. Each round sends ``switch guest`` then ``switch host`` to
both, interleaved, over the control socket (:func:`handoff.control.client.request`,
in this process), timed from the request to its answer: the switch itself.
The hooked session's hooks run meanwhile (and queue up: 4 runs a round).
Goal: ratio ≈ 1.0 (hooks never delay a switch).

    .venv/bin/python bench/hooks.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from handoff.control.client import request

ROOT = Path(__file__).resolve().parents[1]


def profile(directory: Path, name: str, hooks: bool) -> Path:
    text = (
        f'[vm]\nname = "{name}"\nmemory = "32M"\ncpus = 1\naccel = "tcg"\n'
        "shutdown_timeout = 1\n[display]\nvga = \"none\"\nfrontend = \"none\"\n"
        '[input]\nbackend = "qmp"\ndevices = ["name:no such keyboard on this host"]\n'
    )
    if hooks:
        for side in ("guest", "host"):
            text += f'[[hook]]\non = "{side}"\nrun = ["sleep", "30"]\ntimeout = 2\n'
            text += f'[[hook]]\non = "{side}"\nrun = ["true"]\n'
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


def start(path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "handoff", "run", str(path)], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("handoff: running"):
            return process
    raise SystemExit(f"{path.name}: the session did not start")


def switch(socket_path: Path, mode: str) -> float:
    began = time.perf_counter()
    answer = request(socket_path, {"command": "switch", "mode": mode})
    took = time.perf_counter() - began
    assert answer["mode"] == mode, answer
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="handoff-bench-hooks-") as top:
        run = Path(top) / "run"
        env = {**os.environ, "HANDOFF_RUN_DIR": str(run)}
        sessions = {
            name: start(profile(Path(top), name, name == "hooked"), env)
            for name in ("plain", "hooked")
        }
        times: dict[str, list[float]] = {name: [] for name in sessions}
        try:
            for _ in range(args.rounds):
                for mode in ("guest", "host"):
                    for name in ("plain", "hooked"):
                        times[name].append(switch(run / name / "control.sock", mode))
        finally:
            for process in sessions.values():
                process.send_signal(signal.SIGINT)
            for process in sessions.values():
                process.wait(timeout=120)
    plain, hooked = (statistics.median(times[n]) * 1e3 for n in ("plain", "hooked"))
    best_plain, best_hooked = (min(times[n]) * 1e3 for n in ("plain", "hooked"))
    print(f"switches per arm: {len(times['plain'])} (load average {os.getloadavg()[0]:.1f})")
    print(f"plain   median {plain:.2f} ms  best {best_plain:.2f} ms")
    print(f"hooked  median {hooked:.2f} ms  best {best_hooked:.2f} ms")
    print(f"ratio   median {hooked / plain:.2f}x  best {best_hooked / best_plain:.2f}x "
          "(goal: about 1.0x)")


if __name__ == "__main__":
    main()
