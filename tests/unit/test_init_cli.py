"""`handoff init` as a command: what it writes, what it never overwrites, its errors.

The host's facts come from fake trees (tests/unit/fakesysfs.py); the image
maker is recorded instead of run (tests/qemu/test_init_cli.py runs qemu-img).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from handoff.base.errors import HandoffError
from handoff.cli.init import Target, resolve_target, run_init
from handoff.cli.main import main
from handoff.init.choose import InitError, InitRequest
from handoff.init.facts import InitFacts
from handoff.profile import load_profile
from tests.unit.fakesysfs import boot_gpu_only_host, igpu_dgpu_host
from tests.unit.test_init_choose import facts_of


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.images: list[tuple[Path, int]] = []

    def out(self, line: str) -> None:
        self.lines.append(line)

    def make_image(self, path: Path, size: int) -> None:
        self.images.append((path, size))
        path.write_bytes(b"QFI\xfb")


def init(tmp_path: Path, request: InitRequest, target: Target, *, force: bool = False,
         facts: InitFacts | None = None) -> Recorder:
    got = facts or facts_of(igpu_dgpu_host, Path(tempfile.mkdtemp(dir=tmp_path.parent)))
    recorder = Recorder()
    run_init(request, target, force=force, gather=lambda _disk: got,
             make_image=recorder.make_image, out=recorder.out)
    return recorder


def test_it_writes_the_profile_says_why_and_names_the_next_commands(tmp_path: Path) -> None:
    target = Target(tmp_path / "win10.toml", default=False)
    recorder = init(tmp_path, InitRequest("win10"), target)
    profile = load_profile(tmp_path / "win10.toml")
    assert profile.name == "win10"
    assert recorder.lines[0] == f"handoff init: wrote {tmp_path / 'win10.toml'}"
    assert any(line.startswith("  GPU: 01:00.0 VGA compatible controller") for line in
               recorder.lines)
    assert any(line.startswith("  memory: host RAM") for line in recorder.lines)
    assert recorder.lines[-2:] == [f"next: handoff doctor {tmp_path / 'win10.toml'}",
                                   f"then: handoff run {tmp_path / 'win10.toml'}"]


def test_an_existing_profile_is_never_overwritten_without_force(tmp_path: Path) -> None:
    path = tmp_path / "win10.toml"
    path.write_text("# mine\n")
    with pytest.raises(InitError) as refused:
        init(tmp_path, InitRequest("win10"), Target(path, default=False))
    assert "exists already; handoff init never overwrites a profile" in refused.value.message
    assert "--force" in (refused.value.fix or "")
    assert path.read_text() == "# mine\n"
    init(tmp_path, InitRequest("win10"), Target(path, default=False), force=True)
    assert load_profile(path).name == "win10"


def test_a_refusal_writes_nothing_and_creates_no_image(tmp_path: Path) -> None:
    path = tmp_path / "vm.toml"
    recorder = Recorder()
    with pytest.raises(InitError, match="boot GPU"):
        run_init(InitRequest("vm", disk_size="8G"), Target(path, default=False), force=False,
                 gather=lambda _disk: facts_of(boot_gpu_only_host, tmp_path / "f"),
                 make_image=recorder.make_image, out=recorder.out)
    assert not path.exists()
    assert recorder.images == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_disk_size_creates_the_image_beside_the_profile_and_refuses_an_existing_one(
    tmp_path: Path,
) -> None:
    target = Target(tmp_path / "vm.toml", default=False)
    recorder = init(tmp_path, InitRequest("vm", disk_size="8G"), target)
    assert recorder.images == [(tmp_path / "vm.qcow2", 8 << 30)]
    (disk,) = load_profile(tmp_path / "vm.toml").disks
    assert disk.path == tmp_path / "vm.qcow2"
    with pytest.raises(InitError, match=r"vm\.qcow2 exists already"):
        init(tmp_path, InitRequest("vm", disk_size="8G"), target, force=True)


def test_a_name_the_profile_refuses_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    with pytest.raises(HandoffError, match=r"vm\.name"):
        init(tmp_path, InitRequest("qemu"), Target(tmp_path / "q.toml", default=False))
    assert not (tmp_path / "q.toml").exists()


def test_the_default_place_is_the_profile_directory(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("HANDOFF_PROFILE_DIR", str(tmp_path / "profiles"))
    target = resolve_target("win10", None)
    assert target == Target(tmp_path / "profiles" / "win10.toml", default=True)
    recorder = init(tmp_path, InitRequest("win10"), target)
    assert load_profile(tmp_path / "profiles" / "win10.toml").name == "win10"
    assert recorder.lines[-2:] == ["next: handoff doctor win10", "then: handoff run win10"]
    assert resolve_target("x", "-") == Target(None, default=False)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--memory", "lots"], "handoff: --memory lots: not a size\n  fix: write it like 8G"),
        (["--cpus", "99"], "handoff: --cpus 99: this host has 8 logical CPUs\n  fix:"),
        (["--gpu", "09:00.0"], "handoff: --gpu 09:00.0: there is no PCI device"),
        (["--disk-size", "big"], "handoff: --disk-size big: not a disk size"),
    ],
)
def test_bad_input_is_one_error_with_the_fix_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    argv: list[str], says: str,
) -> None:
    host = igpu_dgpu_host(tmp_path / "host")
    for env, path in (("SYSFS", host.paths.sys), ("PROC", host.paths.proc),
                      ("DEV", host.paths.dev)):
        monkeypatch.setenv(f"HANDOFF_{env}_ROOT", str(path))
    status = main(["init", "vm", "--output", str(tmp_path / "vm.toml"), *argv])
    err = capsys.readouterr().err
    assert status == 2
    assert says in err
    assert "Traceback" not in err
    assert not (tmp_path / "vm.toml").exists()
