"""Profile lookup (handoff.cli.profile_lookup): one search path for cli, doctor and completions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from handoff.base.errors import ProfileError
from handoff.cli.main import main
from handoff.cli.profile_lookup import is_path_argument, resolve_profile, search_dirs

TINY = '[vm]\nname = "tiny"\nmemory = "64M"\naccel = "tcg"\n'


def test_the_search_path_is_env_dir_then_xdg_config_then_etc() -> None:
    env = {"HANDOFF_PROFILE_DIR": "/p", "XDG_CONFIG_HOME": "/xdg", "HOME": "/home/a"}
    assert search_dirs(env) == [
        Path("/p"), Path("/xdg/handoff/profiles"), Path("/etc/handoff/profiles"),
    ]


def test_without_variables_it_is_home_config_then_etc() -> None:
    assert search_dirs({"HOME": "/home/a"}) == [
        Path("/home/a/.config/handoff/profiles"), Path("/etc/handoff/profiles"),
    ]
    # empty means unset (as in the shells): not the current directory
    assert search_dirs({"HOME": "/home/a", "HANDOFF_PROFILE_DIR": "", "XDG_CONFIG_HOME": ""}) == [
        Path("/home/a/.config/handoff/profiles"), Path("/etc/handoff/profiles"),
    ]


def test_paths_are_taken_as_given_and_names_are_looked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"
    for d in (first, second):
        d.mkdir()
        (d / "win10.toml").write_text("")
    env = {"HANDOFF_PROFILE_DIR": str(first), "XDG_CONFIG_HOME": str(tmp_path), "HOME": "/"}
    (tmp_path / "handoff").mkdir()
    (tmp_path / "handoff" / "profiles").symlink_to(second)
    (second / "only-here.toml").write_text("")
    assert resolve_profile("win10", env) == first / "win10.toml"
    assert resolve_profile("only-here", env) == tmp_path / "handoff/profiles/only-here.toml"
    assert resolve_profile("some/where.toml", env) == Path("some/where.toml")
    assert is_path_argument("x.toml")
    assert is_path_argument("./x")
    assert not is_path_argument("win10")


def test_a_name_found_nowhere_lists_the_directories_searched(tmp_path: Path) -> None:
    env = {"HANDOFF_PROFILE_DIR": str(tmp_path), "HOME": "/home/a"}
    with pytest.raises(ProfileError) as caught:
        resolve_profile("win11", env)
    assert f"no profile named 'win11' (looked for win11.toml in {tmp_path}, " in str(caught.value)
    assert "/etc/handoff/profiles" in caught.value.message
    assert caught.value.fix is not None


def test_doctor_finds_a_bare_name_in_handoff_profile_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "tiny.toml").write_text(TINY)
    monkeypatch.setenv("HANDOFF_PROFILE_DIR", str(profiles))
    for var in ("HANDOFF_SYSFS_ROOT", "HANDOFF_PROC_ROOT", "HANDOFF_DEV_ROOT"):
        monkeypatch.setenv(var, str(tmp_path / var))
    monkeypatch.chdir(tmp_path)
    main(["doctor", "tiny", "--json", "--qemu", str(tmp_path / "no-qemu")])
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert checks["profile"]["verdict"] == "ok"
    assert str(profiles / "tiny.toml") in checks["profile"]["detail"]
