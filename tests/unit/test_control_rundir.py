"""The run directory: private, locked once per profile, removed on the way out."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from handoff.base.errors import HostError, SessionBusyError, SessionError
from handoff.base.host import HostPaths
from handoff.profile import RESERVED_NAMES
from handoff.session.rundir import JOURNAL_DIR, QEMU_DIR, RunDir, holder_pid, qemu_socket_dir


@pytest.fixture
def paths(tmp_path: Path) -> HostPaths:
    return HostPaths(run=tmp_path / "run")


def test_the_run_directory_is_private_and_records_the_holder(paths: HostPaths) -> None:
    rundir = RunDir.acquire(paths, "demo")
    try:
        assert rundir.path == paths.run / "demo"
        assert os.stat(rundir.path).st_mode & 0o777 == 0o700
        assert holder_pid(rundir.path) == os.getpid()
    finally:
        assert rundir.release() is True
    assert not rundir.path.exists()


def test_a_second_lock_on_the_same_profile_names_the_holder(paths: HostPaths) -> None:
    first = RunDir.acquire(paths, "demo")
    try:
        with pytest.raises(SessionBusyError) as caught:
            RunDir.acquire(paths, "demo")
        assert f"(pid {os.getpid()} holds" in caught.value.message
        other = RunDir.acquire(paths, "other")  # other profiles are independent
        other.release()
    finally:
        first.release()
    RunDir.acquire(paths, "demo").release()  # free again once released


def test_a_lock_file_left_by_a_dead_supervisor_does_not_block(paths: HostPaths) -> None:
    stale = paths.run / "demo"
    stale.mkdir(parents=True, mode=0o755)
    (stale / "lock").write_text("999999\n")
    (stale / "control.sock").write_text("")
    rundir = RunDir.acquire(paths, "demo")
    assert os.stat(stale).st_mode & 0o777 == 0o700, "an existing directory is made private"
    assert holder_pid(stale) == os.getpid()
    assert rundir.release() is True
    assert not stale.exists()


def test_state_left_for_recovery_keeps_the_directory(paths: HostPaths) -> None:
    rundir = RunDir.acquire(paths, "demo")
    (rundir.path / "journal.json").write_text("{}")
    (rundir.path / "qemu.log").write_text("log")
    assert rundir.release() is False
    assert sorted(p.name for p in rundir.path.iterdir()) == ["journal.json"]
    assert rundir.release() is False  # idempotent


def test_a_run_path_that_is_a_file_is_refused(paths: HostPaths) -> None:
    paths.run.mkdir(parents=True)
    (paths.run / "demo").write_text("")
    with pytest.raises(SessionError, match="is not a directory"):
        RunDir.acquire(paths, "demo")


def test_qemu_gets_its_own_socket_directory_owned_by_its_user(paths: HostPaths) -> None:
    rundir = RunDir.acquire(paths, "demo", qemu_user="nobody")
    info = os.stat(rundir.qemu_dir)
    assert rundir.qemu_dir == qemu_socket_dir(paths, "demo")
    assert info.st_mode & 0o777 == 0o700
    assert info.st_uid == pwd.getpwnam("nobody").pw_uid
    assert os.stat(rundir.path).st_uid == os.geteuid(), "the run directory stays ours"
    assert os.stat(rundir.path).st_mode & 0o777 == 0o700, "and private"
    assert rundir.qemu_dir.parent == paths.run / "qemu", "beside it, not inside"
    (rundir.qemu_dir / "input.qmp").write_text("")  # a socket QEMU created
    assert rundir.release() is True
    assert not rundir.path.exists()
    assert not rundir.qemu_dir.exists()


def test_the_run_roots_own_directories_are_names_no_profile_may_take() -> None:
    assert {QEMU_DIR, JOURNAL_DIR} <= RESERVED_NAMES


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_a_session_may_not_take_a_reserved_name_of_the_run_root(
    paths: HostPaths, name: str
) -> None:
    with pytest.raises(SessionError, match="reserved"):
        RunDir.acquire(paths, name)
    assert not (paths.run / name).exists()


def test_an_unknown_qemu_user_is_refused_and_nothing_is_left(paths: HostPaths) -> None:
    with pytest.raises(HostError, match="does not exist"):
        RunDir.acquire(paths, "demo", qemu_user="no-such-user-handoff")
    assert not (paths.run / "demo").exists()
