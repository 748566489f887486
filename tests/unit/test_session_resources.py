"""A session acquires exactly the host resources its profile asks for, GPU first."""

from __future__ import annotations

from pathlib import Path

from handoff.host import HostPaths
from handoff.profile import parse_profile
from handoff.session import default_resources

BASE = """
[vm]
name = "t"
memory = "1G"
"""


def _resources(extra: str, tmp_path: Path) -> list[str]:
    profile = parse_profile(BASE + extra, tmp_path / "t.toml")
    return [r.name for r in default_resources(profile, HostPaths(run=tmp_path / "run"))]


def test_a_profile_without_passthrough_or_input_changes_nothing_on_the_host(
    tmp_path: Path,
) -> None:
    assert _resources("", tmp_path) == []


def test_passthrough_alone_brings_the_gpu_resource(tmp_path: Path) -> None:
    assert _resources('[[passthrough]]\naddress = "01:00.0"\n', tmp_path) == ["gpu"]


def test_input_alone_brings_the_input_resource(tmp_path: Path) -> None:
    assert _resources('[input]\nbackend = "qmp"\n', tmp_path) == ["input"]


def test_gpu_is_acquired_before_input_so_input_is_released_first(tmp_path: Path) -> None:
    extra = '[[passthrough]]\naddress = "01:00.0"\n[input]\nbackend = "virtio"\n'
    assert _resources(extra, tmp_path) == ["gpu", "input"]
