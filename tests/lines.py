"""Reading a supervisor's output in tests: up to a line, bounded."""

from __future__ import annotations

import subprocess
import time


def wait_for_line(session: subprocess.Popen[str], text: str, *, wait: float) -> list[str]:
    """The lines ``session`` printed up to one containing ``text``, read within ``wait`` s.

    Fails with everything read so far when the session ends first, or when
    ``wait`` runs out (a generous bound, never a timing assertion).
    """
    assert session.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        line = session.stdout.readline()
        if not line:
            raise AssertionError(f"the session ended before {text!r}:\n" + "".join(seen))
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"no {text!r} within {wait:g} s:\n" + "".join(seen))
