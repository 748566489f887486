"""[[share]]: which virtiofsd, how it runs, guest RAM shared, the refusals, a real daemon's life."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import trio

from handoff.base.errors import DeskError, ProfileError
from handoff.base.host import HostPaths
from handoff.desk import share as core
from handoff.desk import virtiofsd
from handoff.desk.journal import DeskJournal, list_desk_journals
from handoff.desk.virtiofsd import VirtiofsShares, find_virtiofsd
from handoff.profile import Accelerator, Profile, Share, parse_profile
from handoff.session.plan import ChangeKind, HostFacts, plan_session
from tests.unit.test_tune_plan import WORKED, ryzen

SOURCE = Path("/etc/handoff/share.toml")
DESCRIPTOR = '{"description": "QEMU virtiofsd vhost-user-fs", "type": "fs", "binary": "%s"}'


def profile(shares: str, vm: str = "") -> Profile:
    return parse_profile(f'[vm]\nname = "sharevm"\nmemory = "1G"\n{vm}{shares}', SOURCE)


# --------------------------------------------------------------------------- the descriptors


def test_the_first_fs_descriptor_by_name_wins_and_etc_hides_usr_share() -> None:
    gpu = ("40-gpu.json", '{"type": "gpu", "binary": "/usr/libexec/vhost-user-gpu"}')
    debian = ("50-qemu-virtiofsd.json", DESCRIPTOR % "/usr/lib/qemu/virtiofsd")
    local = ("50-qemu-virtiofsd.json", DESCRIPTOR % "/usr/local/bin/virtiofsd")
    assert core.choose_virtiofsd([gpu, debian]) == Path("/usr/lib/qemu/virtiofsd")
    assert core.choose_virtiofsd([local, gpu, debian]) == Path("/usr/local/bin/virtiofsd")
    assert core.choose_virtiofsd([gpu, ("bad.json", "{")]) is None


def test_no_descriptor_is_refused_naming_the_package(tmp_path: Path) -> None:
    with pytest.raises(DeskError) as caught:
        find_virtiofsd((tmp_path,))
    assert 'no vhost-user descriptor of type "fs"' in caught.value.message
    assert "apt-get install qemu-system-common" in (caught.value.fix or "")


def test_this_hosts_qemu_ships_one() -> None:
    assert find_virtiofsd() == Path("/usr/lib/qemu/virtiofsd")


# --------------------------------------------------------------------------- how it runs


def test_a_user_runs_it_in_a_user_namespace_and_read_only_is_a_bind_mount() -> None:
    share = Share(Path("/srv/games,old"), "games", readonly=True)
    argv = core.Daemon(Path("/usr/lib/qemu/virtiofsd"), share, 1000, 1000, 7).argv()
    assert argv == [
        "setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "--",
        "unshare", "--user", "--map-root-user", "--mount", "--",
        "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', "/srv/games,old",
        "/usr/lib/qemu/virtiofsd", "--fd=7", "-o", "source=/srv/games\\,old",
        "-o", "sandbox=namespace", "-o", "cache=auto",
    ]  # fmt: skip


def test_a_root_owned_folder_read_write_runs_the_daemon_alone() -> None:
    argv = core.Daemon(Path("/v"), Share(Path("/srv"), "s"), 0, 0, 5).argv()
    assert argv == ["/v", "--fd=5", "-o", "source=/srv", "-o", "sandbox=namespace",
                    "-o", "cache=auto"]


# --------------------------------------------------------------------------- the argv


def test_guest_ram_becomes_a_shared_memfd_and_each_share_a_vhost_user_fs_device() -> None:
    p = profile('[[share]]\npath = "/srv/games"\ntag = "games"\n'
                '[[share]]\npath = "/srv/dl"\ntag = "dl"\nreadonly = true\n')
    plan = plan_session(p, HostFacts(Accelerator.TCG, "", 0), HostPaths())
    argv = list(plan.argv)
    assert "q35,accel=tcg,memory-backend=ram" in argv
    assert "memory-backend-memfd,id=ram,size=1024M,share=on" in argv
    sock = "/run/handoff/qemu/sharevm/virtiofs-{}.sock"
    assert argv[argv.index("-chardev", argv.index("-vga")):][:8] == [
        "-chardev", f"socket,id=virtiofs-0,path={sock.format(0)}",
        "-device", "vhost-user-fs-pci,chardev=virtiofs-0,tag=games",
        "-chardev", f"socket,id=virtiofs-1,path={sock.format(1)}",
        "-device", "vhost-user-fs-pci,chardev=virtiofs-1,tag=dl",
    ]
    changes = tuple(c for c in plan.changes if c.kind is ChangeKind.START_VIRTIOFSD)
    assert [c.target for c in changes] == ["/srv/games (tag games)", "/srv/dl (tag dl)"]
    assert "read-only" in changes[1].detail


def test_with_hugepages_the_hugetlb_backend_is_shared() -> None:
    text = WORKED + '[[share]]\npath = "/srv"\ntag = "srv"\n'
    plan = plan_session(parse_profile(text, SOURCE), ryzen(), HostPaths())
    backend = plan.argv[plan.argv.index("-object") + 1]
    assert backend.startswith("memory-backend-memfd,id=ram,size=16384M,hugetlb=on,")
    assert backend.endswith(",share=on")


def test_without_shares_ram_stays_as_it_was() -> None:
    assert not any("memory-backend" in a for a in plan_session(
        profile(""), HostFacts(Accelerator.TCG, "", 0), HostPaths()).argv)


# --------------------------------------------------------------------------- refusals


def test_a_missing_folder_is_refused_naming_the_key(tmp_path: Path) -> None:
    p = profile(f'[[share]]\npath = "{tmp_path}/nope"\ntag = "x"\n')
    with pytest.raises(ProfileError) as caught:
        VirtiofsShares(p, HostPaths()).check()
    assert caught.value.key == "share[0].path"
    assert "the folder does not exist" in caught.value.message
    assert f"mkdir -p {tmp_path}/nope" in (caught.value.fix or "")


# --------------------------------------------------------------------------- a real daemon


@pytest.mark.skipif(os.geteuid() != 0, reason="virtiofsd for another user needs root")
def test_the_daemon_waits_for_qemu_is_journaled_and_is_ended_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    monkeypatch.setattr(virtiofsd, "EXIT_TIMEOUT", 1.0)
    open_dir = Path(tempfile.mkdtemp(prefix="handoff-share-", dir="/run"))  # nobody may enter
    open_dir.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(open_dir, ignore_errors=True))
    folder = open_dir / "games"
    folder.mkdir()
    os.chown(folder, 65534, 65534)  # nobody's: the daemon runs as nobody
    paths = HostPaths(run=tmp_path / "run")
    (paths.run / "sharevm").mkdir(parents=True)
    (paths.run / "qemu" / "sharevm").mkdir(parents=True)
    lines: list[str] = []
    resource = VirtiofsShares(profile(f'[[share]]\npath = "{folder}"\ntag = "games"\n'),
                              paths, report=lines.append)
    trio.run(resource.acquire)
    (journal,) = list_desk_journals(paths)
    ((pid, _),) = DeskJournal.load(journal).pids
    assert (Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0]) == "65534"
    assert (paths.run / "qemu" / "sharevm" / "virtiofs-0.sock").is_socket()
    assert "virtiofsd as nobody" in lines[-1]
    assert "mount -t virtiofs games /mnt" in lines[-1]
    trio.run(resource.release)
    assert not Path(f"/proc/{pid}").exists()
    assert not list_desk_journals(paths)
    assert not (paths.run / "qemu" / "sharevm" / "virtiofs-0.sock").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="virtiofsd for another user needs root")
def test_a_folder_its_user_cannot_reach_is_refused_with_the_daemons_words(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "games"  # under root's 0700 pytest directory
    folder.mkdir()
    os.chown(folder, 65534, 65534)
    paths = HostPaths(run=tmp_path / "run")
    (paths.run / "sharevm").mkdir(parents=True)
    (paths.run / "qemu" / "sharevm").mkdir(parents=True)
    resource = VirtiofsShares(profile(f'[[share]]\npath = "{folder}"\ntag = "games"\n'),
                              paths, report=lambda _: None)
    with pytest.raises(DeskError) as caught:
        trio.run(resource.acquire)
    assert caught.value.message.startswith(
        f"share[0]: virtiofsd for {folder} (as nobody) exited with status 1: ")
    assert "Permission denied" in caught.value.message
    assert caught.value.fix == ("the folder must be readable by nobody and writable (vm.user "
                                "where set, else the folder's owner)")
    assert not list_desk_journals(paths)
    assert not (paths.run / "qemu" / "sharevm" / "virtiofs-0.sock").exists()
