"""The one home of Linux input codes (handoff/input/codes.py), checked against python-evdev."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import evdev.ecodes
import pytest

from handoff.input import codes
from handoff.input.edge import read_queued

REPO = Path(__file__).resolve().parents[2]
PREFIXES = ("EV_", "SYN_", "REL_", "BTN_", "KEY_", "LED_")


def test_every_code_is_the_kernel_s_number_as_evdev_knows_it() -> None:
    names = [n for n in vars(codes) if n.startswith(PREFIXES)]
    assert len(names) >= 25
    for name in names:
        assert getattr(codes, name) == getattr(evdev.ecodes, name), name


@pytest.mark.parametrize(
    "module",
    ["handoff.input.codes", "handoff.input.router", "handoff.input.translate",
     "handoff.input.keymap"],
)
def test_the_pure_input_modules_import_no_trio_evdev_udev_or_edge(module: str) -> None:
    program = f"import json, sys, {module}\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, check=True
    )
    loaded: list[str] = json.loads(done.stdout)
    heavy = ("trio", "evdev", "pyudev", "handoff.input.edge", "handoff.input.forward",
             "handoff.input.resource", "handoff.qemu")
    assert [m for m in loaded if m.startswith(heavy)] == []


def test_read_queued_turns_input_event_records_into_tuples_and_eof_into_gone() -> None:
    reader, writer = os.pipe()
    os.set_blocking(reader, False)
    try:
        with pytest.raises(BlockingIOError):
            read_queued(reader)
        records = [(codes.EV_KEY, 30, 1), (codes.EV_REL, codes.REL_X, -5), (codes.EV_SYN, 0, 0)]
        os.write(writer, b"".join(codes.INPUT_EVENT.pack(7, 8, *r) for r in records))
        assert read_queued(reader) == records
        os.close(writer)
        writer = -1
        assert read_queued(reader) is None  # end of file: the device is gone
    finally:
        os.close(reader)
        if writer >= 0:
            os.close(writer)

