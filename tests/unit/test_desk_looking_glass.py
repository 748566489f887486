"""[looking_glass]: the size table, QEMU's part, kvmfr's refusals, and the shm file's life.

The resource runs against a real directory standing in for /dev (HostPaths.dev):
the file it makes, replaces and removes is a real file with real ownership.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest
import trio

from handoff.base.errors import DeskError
from handoff.base.host import HostPaths
from handoff.desk import looking_glass as lg
from handoff.desk.journal import DeskJournal, list_desk_journals
from handoff.desk.recovery import recover_desk
from handoff.desk.shm import LookingGlassShm
from handoff.profile import Accelerator, LookingGlass, LookingGlassDevice, Profile, parse_profile
from handoff.session.plan import ChangeKind, HostFacts, plan_session
from handoff.session.start import default_resources

SOURCE = Path("/etc/handoff/lg.toml")
ME = pwd.getpwuid(os.geteuid()).pw_name


def profile(section: str = "", extra_vm: str = "") -> Profile:
    text = (f'[vm]\nname = "desk"\nmemory = "1G"\n{extra_vm}'
            f'[looking_glass]\nenabled = true\nowner = "{ME}"\n{section}')
    return parse_profile(text, SOURCE)


# --------------------------------------------------------------------------- the size


@pytest.mark.parametrize(("width", "height", "hdr", "mib"), [
    (1920, 1080, False, 32),
    (2560, 1440, False, 64),
    (3840, 2160, False, 128),
    (1920, 1080, True, 64),
    (2560, 1440, True, 128),
    (3840, 2160, True, 256),
])  # fmt: skip
def test_auto_size_is_looking_glass_table_and_hdr_doubles(
    width: int, height: int, hdr: bool, mib: int
) -> None:
    assert lg.auto_size_mib(width, height, hdr) == mib
    section = f"width = {width}\nheight = {height}\nhdr = {'true' if hdr else 'false'}\n"
    assert lg.size_mib(profile(section).looking_glass) == mib


def test_an_explicit_size_that_holds_the_frames_is_kept() -> None:
    assert profile('size = "128M"\n').looking_glass.size_mib == 128
    assert profile("size = 64\n").looking_glass.size_mib == 64
    assert profile('size = "auto"\n').looking_glass.size_mib is None


def test_a_section_left_out_is_off_and_adds_nothing() -> None:
    plain = parse_profile('[vm]\nname = "desk"\nmemory = "1G"\n', SOURCE)
    assert plain.looking_glass == LookingGlass()
    plan = plan_session(plain, HostFacts(Accelerator.TCG, "", os.geteuid()), HostPaths())
    assert "ivshmem-plain" not in " ".join(plan.argv)
    assert not tuple(c for c in plan.changes if c.kind is ChangeKind.CREATE_SHM)


# --------------------------------------------------------------------------- the argv


def test_the_argv_maps_the_shm_file_shared_into_ivshmem_plain_without_a_balloon() -> None:
    plan = plan_session(profile("width = 2560\nheight = 1440\n"),
                        HostFacts(Accelerator.TCG, "", os.geteuid()), HostPaths())
    argv = list(plan.argv)
    backend = argv[argv.index("-object") + 1]
    assert backend == ("memory-backend-file,id=looking-glass,"
                       "mem-path=/dev/shm/looking-glass-desk,size=64M,share=on")
    assert argv[argv.index("-object") + 2:argv.index("-object") + 4] == [
        "-device", "ivshmem-plain,id=looking-glass-ivshmem,memdev=looking-glass"]
    assert not any("balloon" in a for a in argv)
    assert plan.devices.count("ivshmem-plain") == 1
    (change,) = tuple(c for c in plan.changes if c.kind is ChangeKind.CREATE_SHM)
    assert change.target == "/dev/shm/looking-glass-desk"
    assert f"owner {ME}" in change.detail
    assert "0660" in change.detail


def test_kvmfr_maps_the_module_device_and_plans_no_file() -> None:
    plan = plan_session(profile('device = "kvmfr"\nkvmfr_index = 1\n'),
                        HostFacts(Accelerator.TCG, "", os.geteuid()), HostPaths())
    assert ("memory-backend-file,id=looking-glass,mem-path=/dev/kvmfr1,size=32M,share=on"
            in plan.argv)
    assert not tuple(c for c in plan.changes if c.kind is ChangeKind.CREATE_SHM)


def test_the_client_command_names_the_file() -> None:
    path = Path("/dev/shm/looking-glass-desk")
    assert lg.client_command(path) == "looking-glass-client -f /dev/shm/looking-glass-desk -s"


# --------------------------------------------------------------------------- kvmfr


KVMFR = Path("/dev/kvmfr0")


@pytest.mark.parametrize(("facts", "fragment"), [
    (lg.KvmfrFacts("missing", None, ()), "does not exist"),
    (lg.KvmfrFacts("regular file", None, (64,)), "is a regular file, not the kvmfr"),
    (lg.KvmfrFacts("char", "mem", (64,)), "character device of mem"),
    (lg.KvmfrFacts("char", "kvmfr", ()), "none for index 0"),
    (lg.KvmfrFacts("char", "kvmfr", (16,)), "has 16 MiB (static_size_mb), smaller than the 32"),
])  # fmt: skip
def test_kvmfr_is_refused_unless_the_module_device_is_big_enough(
    facts: lg.KvmfrFacts, fragment: str
) -> None:
    section = profile('device = "kvmfr"\n').looking_glass
    problem = lg.kvmfr_problem(section, KVMFR, facts)
    assert problem is not None
    assert fragment in problem
    fix = lg.kvmfr_fix(section, "alice")
    assert "modprobe kvmfr static_size_mb=32" in fix
    assert 'OWNER="alice"' in fix


def test_kvmfr_with_the_size_is_accepted() -> None:
    section = profile('device = "kvmfr"\n').looking_glass
    assert lg.kvmfr_problem(section, KVMFR, lg.KvmfrFacts("char", "kvmfr", (32,))) is None


def test_a_regular_file_where_kvmfr_should_be_is_refused_and_left_alone(tmp_path: Path) -> None:
    paths = HostPaths(dev=tmp_path / "dev", run=tmp_path / "run")
    paths.dev.mkdir()
    fake = paths.dev / "kvmfr0"
    fake.write_bytes(b"x" * 10)
    resource = LookingGlassShm(profile('device = "kvmfr"\n'), paths, report=lambda _: None)
    with pytest.raises(DeskError) as caught:
        trio.run(resource.acquire)
    assert "is a regular file" in caught.value.message
    assert "modprobe kvmfr static_size_mb=32" in (caught.value.fix or "")
    assert fake.read_bytes() == b"x" * 10
    assert not list_desk_journals(paths)


# --------------------------------------------------------------------------- the shm file


@pytest.fixture
def paths(tmp_path: Path) -> HostPaths:
    paths = HostPaths(dev=tmp_path / "dev", run=tmp_path / "run")
    (paths.dev / "shm").mkdir(parents=True)
    return paths


def test_the_file_is_made_before_qemu_with_size_owner_group_mode_and_removed_after(
    paths: HostPaths
) -> None:
    lines: list[str] = []
    resource = LookingGlassShm(profile(), paths, report=lines.append)
    file = paths.dev / "shm" / "looking-glass-desk"
    trio.run(resource.acquire)
    st = os.stat(file)
    assert (st.st_size, st.st_uid, st.st_gid) == (32 << 20, os.geteuid(), os.getegid())
    assert stat.S_IMODE(st.st_mode) == 0o660
    (journal,) = list_desk_journals(paths)
    assert DeskJournal.load(journal).files == [str(file)]
    assert f"looking-glass-client -f {file} -s" in lines[-1]
    assert resource.status()["client"] == f"looking-glass-client -f {file} -s"
    trio.run(resource.release)
    assert not file.exists()
    assert not list_desk_journals(paths)
    trio.run(resource.release)  # idempotent


def test_a_stale_file_of_another_size_is_replaced(paths: HostPaths) -> None:
    file = paths.dev / "shm" / "looking-glass-desk"
    file.write_bytes(b"old" * 1000)
    file.chmod(0o644)
    lines: list[str] = []
    resource = LookingGlassShm(profile(), paths, report=lines.append)
    trio.run(resource.acquire)
    st = os.stat(file)
    assert st.st_size == 32 << 20
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert any("replaced a stale" in line for line in lines)
    trio.run(resource.release)


def test_a_symlink_in_its_place_is_removed_never_followed(paths: HostPaths, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    victim.chmod(0o600)
    (paths.dev / "shm" / "looking-glass-desk").symlink_to(victim)
    resource = LookingGlassShm(profile(), paths, report=lambda _: None)
    trio.run(resource.acquire)
    assert victim.read_text() == "keep"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert not (paths.dev / "shm" / "looking-glass-desk").is_symlink()
    trio.run(resource.release)


def test_a_dead_supervisor_file_is_removed_by_recover_once_qemu_is_gone(paths: HostPaths) -> None:
    resource = LookingGlassShm(profile(), paths, report=lambda _: None)
    trio.run(resource.acquire)
    file = paths.dev / "shm" / "looking-glass-desk"
    lines: list[str] = []
    assert not recover_desk(paths, lines.append)  # the session's lock is held: left alone
    assert file.exists()
    assert "left alone" in lines[-1]
    resource.note_qemu_pid(os.getpid())  # "QEMU" (this process) still maps it
    assert resource._hold.locks is not None
    resource._hold.locks.release()  # the supervisor dies: the kernel drops its flock
    assert not recover_desk(paths, lines.append)
    assert file.exists()
    assert "still uses" in lines[-1]
    journal = DeskJournal.load(list_desk_journals(paths)[0])
    journal.qemu_pid = 2**22 + 1  # gone
    journal.save()
    assert recover_desk(paths, lines.append)
    assert not file.exists()
    assert not list_desk_journals(paths)
    assert lines[-1] == f"returned: removed {file} of desk"


def test_an_owner_that_does_not_exist_is_refused_before_anything(paths: HostPaths) -> None:
    bad = parse_profile('[vm]\nname = "desk"\nmemory = "1G"\n[looking_glass]\nenabled = true\n'
                        'owner = "no-such-user-lg"\n', SOURCE)
    resource = LookingGlassShm(bad, paths, report=lambda _: None)
    with pytest.raises(DeskError) as caught:
        trio.run(resource.acquire)
    assert caught.value.message == (
        "looking_glass.owner: the user 'no-such-user-lg' does not exist on this host")
    assert not list(paths.dev.joinpath("shm").iterdir())
    assert not list_desk_journals(paths)


def test_the_session_acquires_looking_glass_first() -> None:
    plan = plan_session(profile(), HostFacts(Accelerator.TCG, "", os.geteuid()), HostPaths())
    resources = default_resources(plan, HostPaths(), report=lambda _: None)
    assert resources[0].name == "looking-glass"
    assert LookingGlassDevice.SHM is profile().looking_glass.device


# --------------------------------------------------------------------------- doctor


def test_doctor_shows_the_size_against_the_resolution_and_warns_of_scrolllock(
    paths: HostPaths,
) -> None:
    from handoff.checks import DoctorEnv, Verdict
    from handoff.checks.looking_glass import check_looking_glass

    clashing = parse_profile(
        '[vm]\nname = "desk"\nmemory = "1G"\n[input]\nbackend = "qmp"\n'
        'hotkey = ["KEY_SCROLLLOCK"]\n'
        f'[looking_glass]\nenabled = true\nowner = "{ME}"\nwidth = 2560\nheight = 1440\n',
        SOURCE)
    checks = {c.name: c for c in check_looking_glass(DoctorEnv(host=paths), clashing)}
    assert checks["looking-glass-size"].detail == "64 MiB (auto); 2560x1440 SDR needs 38.1 MiB"
    assert checks["looking-glass-memory"].verdict is Verdict.OK
    hotkey = checks["looking-glass-hotkey"]
    assert hotkey.verdict is Verdict.WARN
    assert hotkey.detail.startswith("input.hotkey is KEY_SCROLLLOCK alone")
    assert "looking-glass-client -m KEY_RIGHTCTRL" in (hotkey.fix or "")
    assert "replaces the client's SPICE input" in checks["looking-glass-input"].detail


def test_doctor_fails_a_kvmfr_that_is_a_regular_file(paths: HostPaths) -> None:
    from handoff.checks import DoctorEnv, Verdict
    from handoff.checks.looking_glass import check_looking_glass

    (paths.dev / "kvmfr0").write_text("")
    checks = {c.name: c for c in check_looking_glass(DoctorEnv(host=paths),
                                                     profile('device = "kvmfr"\n'))}
    memory = checks["looking-glass-memory"]
    assert memory.verdict is Verdict.FAIL
    assert "is a regular file" in memory.detail
    assert checks["looking-glass-hotkey"].verdict is Verdict.OK
