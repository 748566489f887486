"""[sound] user and latency_ms: the pa audiodev, QEMU's environment, no server, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from handoff.base.errors import ProfileError
from handoff.base.host import HostPaths
from handoff.checks import Verdict
from handoff.checks.sound import check_sound_server
from handoff.desk.sound import SoundServer
from handoff.desk.sound_host import default_server, read_sound_server
from handoff.profile import Accelerator, Profile, parse_profile
from handoff.session.plan import HostFacts, QemuOwner, plan_session

SOURCE = Path("/etc/handoff/snd.toml")
SOCKET = Path("/run/user/1000/pulse/native")
COOKIE = Path("/home/alice/.config/pulse/cookie")


def profile(sound: str) -> Profile:
    return parse_profile(f'[vm]\nname = "snd"\nmemory = "1G"\n[sound]\nmodel = "hda"\n{sound}',
                         SOURCE)


def facts(server: SoundServer | None) -> HostFacts:
    return HostFacts(Accelerator.TCG, "", 0, sound=server)


ALICE = SoundServer("alice", 1000, SOCKET, True, "", COOKIE)
SILENT = SoundServer("alice", 1000, SOCKET, False, f"no sound server: {SOCKET} does not exist",
                     None)


def test_qemu_plays_to_the_users_socket_with_their_cookie_and_the_latency() -> None:
    p = profile('backend = "pa"\nuser = "alice"\nlatency_ms = 30\n')
    assert (p.sound.user, p.sound.latency_ms) == ("alice", 30)
    plan = plan_session(p, facts(ALICE), HostPaths())
    assert ("pa,id=snd0,server=unix:/run/user/1000/pulse/native,in.latency=30000,"
            "out.latency=30000") in plan.argv
    assert plan.environment == (("PULSE_COOKIE", str(COOKIE)),)
    assert plan.notes == ()


def test_the_default_latency_is_20_ms() -> None:
    assert profile('backend = "pa"\n').sound.latency_ms == 20


def test_no_server_means_the_none_driver_and_a_line_saying_why() -> None:
    plan = plan_session(profile('backend = "pa"\nuser = "alice"\n'), facts(SILENT), HostPaths())
    assert "none,id=snd0" in plan.argv
    assert plan.environment == ()
    (note,) = plan.notes
    assert note.startswith(f"no sound on the host: no sound server: {SOCKET} does not exist; "
                           "the VM runs without it (start alice's desktop session")


def test_without_a_user_qemu_finds_its_own_server_where_libpulse_would() -> None:
    assert default_server({"PULSE_SERVER": "unix:/tmp/pa"}, 0) == Path("/tmp/pa")
    assert default_server({"XDG_RUNTIME_DIR": "/run/user/7"}, 0) == Path("/run/user/7/pulse/native")
    assert default_server({}, 0) == Path("/run/user/0/pulse/native")
    own = SoundServer("uid 0", 0, Path("/run/user/0/pulse/native"), True, "", None, explicit=False)
    assert "pa,id=snd0,in.latency=20000,out.latency=20000" in plan_session(
        profile('backend = "pa"\n'), facts(own), HostPaths()).argv


@pytest.mark.parametrize(("text", "key", "fragment"), [
    ('backend = "alsa"\nuser = "alice"\n', "sound.user", 'reached through backend = "pa"'),
    ('backend = "pa"\nlatency_ms = 0\n', "sound.latency_ms", "from 1 to 1000"),
    ('backend = "pa"\nuser = "Alice Smith"\n', "sound.user", "the desktop user"),
])  # fmt: skip
def test_bad_sound_keys_are_one_line_with_the_fix(text: str, key: str, fragment: str) -> None:
    with pytest.raises(ProfileError) as caught:
        profile(text)
    assert caught.value.key == key
    assert fragment in caught.value.message


def test_qemu_as_vm_user_reads_a_copy_of_the_cookie_in_its_own_directory() -> None:
    p = parse_profile('[vm]\nname = "snd"\nmemory = "1G"\nuser = "nobody"\n[sound]\n'
                      'model = "hda"\nbackend = "pa"\nuser = "alice"\n', SOURCE)
    owner = QemuOwner("nobody", 65534, 65534)
    host = HostFacts(Accelerator.TCG, "", 0, qemu_owner=owner, sound=ALICE)
    plan = plan_session(p, host, HostPaths())
    assert plan.environment == (("PULSE_COOKIE", "/run/handoff/qemu/snd/pulse-cookie"),)


def test_an_unknown_user_is_refused_and_doctor_fails_it() -> None:
    p = profile('backend = "pa"\nuser = "no-such-user-snd"\n')
    with pytest.raises(ProfileError) as caught:
        read_sound_server(p)
    assert caught.value.key == "sound.user"
    (check,) = check_sound_server(p)
    assert check.verdict is Verdict.FAIL


def test_doctor_warns_when_no_server_answers() -> None:
    (check,) = check_sound_server(profile('backend = "pa"\nuser = "root"\n'))
    assert check.verdict is Verdict.WARN  # no PulseAudio of root's here
    assert "/run/user/0/pulse/native" in check.detail


def test_recover_takes_back_the_acl_entries_a_dead_session_added(tmp_path: Path) -> None:
    import subprocess

    from handoff.desk.journal import DeskJournal, list_desk_journals
    from handoff.desk.recovery import recover_desk

    target = tmp_path / "native"
    target.write_text("")
    subprocess.run(["setfacl", "-m", "u:nobody:rw", str(target)], check=True)
    paths = HostPaths(run=tmp_path / "run")
    journal = DeskJournal.begin(paths, "snd", "sound")
    journal.acls.append([str(target), "nobody"])
    journal.save()
    lines: list[str] = []
    assert recover_desk(paths, lines.append)
    shown = subprocess.run(["getfacl", "--omit-header", str(target)], capture_output=True,
                           text=True, check=True).stdout
    assert "user:nobody:" not in shown
    assert lines == [f"returned: gave back nobody's access to {target} of snd"]
    assert not list_desk_journals(paths)
