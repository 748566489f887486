"""The capability probe's on-disk cache, against the real QEMU.

The binary under test is a wrapper script that logs each start and execs the
real qemu-system-x86_64, so "read from the cache" is proven by the count of
QEMU starts, not by timing.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import handoff
from handoff.qemu import capabilities, probe_cache
from handoff.qemu.capabilities import probe
from handoff.qemu.probe_cache import QemuCapabilities

from .conftest import QEMU

pytestmark = pytest.mark.qemu

REPO = Path(__file__).resolve().parents[2]


class CountingQemu:
    """A qemu-system-x86_64 wrapper that appends a line to a log per start."""

    def __init__(self, directory: Path) -> None:
        real = shutil.which(QEMU)
        assert real is not None
        self.log = directory / "starts.log"
        self.path = directory / "qemu-system-x86_64"
        self.path.write_text(f'#!/bin/sh\necho "$*" >> {self.log}\nexec {real} "$@"\n')
        self.path.chmod(0o755)

    @property
    def starts(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0


@pytest.fixture
def qemu(tmp_path: Path) -> CountingQemu:
    (tmp_path / "bin").mkdir()
    return CountingQemu(tmp_path / "bin")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv(probe_cache.CACHE_DIR_ENV, str(directory))
    return directory


def probe_in_new_process(qemu: CountingQemu) -> QemuCapabilities:
    """probe() as a fresh `handoff` process would do it: nothing in memory."""
    capabilities._cache.clear()
    return probe(str(qemu.path))


def the_cache_file(cache: Path) -> Path:
    (path,) = cache.glob("qemu-capabilities-*.json")
    return path


def test_a_real_probe_fills_the_cache_and_the_next_process_starts_no_qemu(
    qemu: CountingQemu, cache: Path
) -> None:
    script = (
        "import sys\nfrom handoff.qemu.capabilities import probe\n"
        "caps = probe(sys.argv[1])\nprint(caps.version_text, len(caps.devices))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run([sys.executable, "-c", script, str(qemu.path)], env=env,
                           capture_output=True, text=True, check=True)
    starts = qemu.starts
    assert starts >= 6  # -version, -device help, -accel help, ...
    path = the_cache_file(cache)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert json.loads(path.read_text())["schema"] == probe_cache.SCHEMA
    second = subprocess.run([sys.executable, "-c", script, str(qemu.path)], env=env,
                            capture_output=True, text=True, check=True)
    assert second.stdout == first.stdout
    assert qemu.starts == starts  # answered from the file: QEMU never ran


def test_the_cached_answer_equals_a_fresh_probe(qemu: CountingQemu, cache: Path) -> None:
    fresh = probe_in_new_process(qemu)
    cached = probe_in_new_process(qemu)
    assert cached is not fresh
    assert cached == fresh
    assert "tcg" in cached.accelerators


def test_touching_the_binary_probes_again(qemu: CountingQemu, cache: Path) -> None:
    probe_in_new_process(qemu)
    starts = qemu.starts
    st = qemu.path.stat()
    os.utime(qemu.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    probe_in_new_process(qemu)
    assert qemu.starts == 2 * starts
    probe_in_new_process(qemu)  # and the new answer is cached in turn
    assert qemu.starts == 2 * starts


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: "{not json",
        lambda text: text[: len(text) // 2],  # a partial write
        lambda text: "[]",
        lambda text: text.replace(f'"schema": {probe_cache.SCHEMA}', '"schema": 99'),
        lambda text: text.replace('"accelerators"', '"accelerators_v0"'),
    ],
    ids=["garbage", "truncated", "not-an-object", "other-schema", "other-fields"],
)
def test_a_damaged_cache_file_is_ignored_and_rewritten(
    qemu: CountingQemu, cache: Path, damage: Callable[[str], str]
) -> None:
    good = probe_in_new_process(qemu)
    starts = qemu.starts
    path = the_cache_file(cache)
    path.write_text(damage(path.read_text()))
    assert probe_in_new_process(qemu) == good
    assert qemu.starts == 2 * starts
    assert probe_in_new_process(qemu) == good  # rewritten: read back without QEMU
    assert qemu.starts == 2 * starts


def test_a_file_others_may_write_is_not_trusted(qemu: CountingQemu, cache: Path) -> None:
    probe_in_new_process(qemu)
    starts = qemu.starts
    the_cache_file(cache).chmod(0o666)
    probe_in_new_process(qemu)
    assert qemu.starts == 2 * starts


def test_another_handoff_version_probes_again(
    qemu: CountingQemu, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe_in_new_process(qemu)
    starts = qemu.starts
    monkeypatch.setattr(handoff, "__version__", "99.0.0")
    probe_in_new_process(qemu)
    assert qemu.starts == 2 * starts


def test_an_unwritable_cache_directory_only_costs_the_probe(
    qemu: CountingQemu, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(probe_cache.CACHE_DIR_ENV, str(blocker / "cache"))
    first = probe_in_new_process(qemu)
    starts = qemu.starts
    assert probe_in_new_process(qemu) == first
    assert qemu.starts == 2 * starts
