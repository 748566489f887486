"""The desk around the VM on a real kernel: Looking Glass, a USB device, shared folders.

One nested guest (L2: the testbed's own kernel and a busybox initramfs, built
like the live hand-off test's) boots under ``handoff run`` with QEMU as
``vm.user = "nobody"`` and carries every check that needs a guest OS:

- ``[looking_glass]``: L2 finds the IVSHMEM device (1af4:1110), prints BAR 2's
  size and writes a pattern at its first and last bytes with busybox devmem;
  the ``owner`` (nobody, not root) reads both from the shm file while the VM
  runs; Ctrl-C removes the file.
- ``[[usb]]``: the testbed's usb-ccid (08e6:4433, on its own xHCI) shows up in
  L2's sysfs; its /dev/bus/usb node is nobody's during the session; the
  testbed unbinds its xHCI (the device is gone for the host, as if pulled) and
  L2 loses it, binds it again (plugged) and L2 has it again, its new node
  nobody's too; root's after the end.
- ``[[share]]``: L2 mounts tag "rw", reads the file the host wrote and writes
  one the host reads (owned by nobody: virtiofsd ran as vm.user); tag "ro"
  (readonly) refuses the write; no virtiofsd after Ctrl-C.

That test runs in the systemd boot (switch_root: user namespaces work); the
others in the classic boot, without an L2 OS (firmware only: cheap): a stale
shm file is replaced; after a supervisor SIGKILL its files and virtiofsd stay
while QEMU runs, virtiofsd ends with QEMU, `handoff recover` removes the rest;
a QEMU crash leaves no virtiofsd (and where no user namespace may be made, the
chroot'ed classic boot, virtiofsd runs as root and the run says so); a regular
file where the kvmfr device should be is refused with nothing changed.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoff.base.host import HostPaths
from handoff.desk.journal import DeskJournal, desk_dir
from tests.testbed import devices, guest
from tests.testbed.test_live_realkernel import GUEST_WAIT, WAIT, build_l2, wait_for_line

pytestmark = pytest.mark.realkernel

CHECKOUT = Path(__file__).resolve().parents[2]
NAME = "desktb"
OWNER = "nobody"
SHM = Path("/dev/shm") / f"looking-glass-{NAME}"
MIB = 1 << 20

# L2: Looking Glass's pattern into BAR 2 ("DESKFROML2!!" at the start, "END!" 64 bytes
# before its end: busybox devmem maps a second page for a word within 32 bytes of a
# page's end, and the page after BAR 2 may be another device's), the two shares, then
# every second the USB devices it sees (root hubs, 1d6b, left out) whenever they change.
L2_DESK_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /modules/$m 2>/dev/null; done
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor):$(cat $d/device)" = "0x1af4:0x1110" ] || continue
  set -- $(sed -n 3p $d/resource)
  start=$(( $1 )); size=$(( $2 - $1 + 1 ))
  echo 1 > $d/enable
  devmem $(printf 0x%x $start) 32 0x4b534544
  devmem $(printf 0x%x $(( start + 4 ))) 32 0x4d4f5246
  devmem $(printf 0x%x $(( start + 8 ))) 32 0x2121324c
  devmem $(printf 0x%x $(( start + size - 64 ))) 32 0x21444e45
  echo "L2LG bar2=$size first=$(devmem $(printf 0x%x $start) 32)"
done
mkdir -p /rw /ro
if mount -t virtiofs rw /rw; then
  echo "L2SHARE read=$(cat /rw/from-host.txt)"
  echo from-l2 > /rw/from-l2.txt; echo "L2SHARE wrote=$?"
else
  echo "L2SHARE mount-failed"
fi
if mount -t virtiofs ro /ro; then
  echo "L2SHARERO read=$(cat /ro/from-host.txt)"
  ( echo x > /ro/from-l2.txt ) 2>/dev/null; echo "L2SHARERO write=$?"
else
  echo "L2SHARERO mount-failed"
fi
prev=none
while true; do
  cur=""
  for u in /sys/bus/usb/devices/*; do
    [ -f $u/idVendor ] || continue
    id="$(cat $u/idVendor):$(cat $u/idProduct)"
    [ "${id%%:*}" = 1d6b ] || cur="$cur $id"
  done
  [ "$cur" != "$prev" ] && echo "L2USB$cur" && prev="$cur"
  sleep 1
done
"""
L2_DESK_MODULES = ("xhci_pci", "virtio_pci", "virtiofs")


def profile_text(body: str = "", vm: str = "") -> str:
    return (
        f'[vm]\nname = "{NAME}"\nmemory = "192M"\ncpus = 1\naccel = "tcg"\n'
        f'shutdown_timeout = 2\n{vm}'
        '[display]\nvga = "none"\nfrontend = "none"\n'
        f'[looking_glass]\nenabled = true\nowner = "{OWNER}"\n{body}'
    )


def handoff(run: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "handoff", *argv], env={**os.environ, "HANDOFF_RUN_DIR": str(run)},
        cwd=CHECKOUT, capture_output=True, text=True, check=False, timeout=WAIT,
    )


def start(run: Path, profile: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "handoff", "run", str(profile)],
        env={**os.environ, "HANDOFF_RUN_DIR": str(run)}, cwd=CHECKOUT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def end(session: subprocess.Popen[str]) -> str:
    """The session's remaining output once it has ended (killed if it still runs)."""
    if session.poll() is None:
        session.kill()
    if session.stdout is None or session.stdout.closed:
        session.wait()
        return ""
    out, _ = session.communicate(timeout=WAIT)
    return out


def read_as_owner(*argv: str) -> bytes:
    """``argv`` run as the owner (nobody), never root: what the client's user can read."""
    account = pwd.getpwnam(OWNER)
    return subprocess.run(
        ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups",
         "--", *argv], check=True, capture_output=True, timeout=60,
    ).stdout


def virtiofsd_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == "virtiofsd":
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture
def run_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A run root QEMU's user can pass through (pytest's tmp_path is root's 0700)."""
    run = Path("/run") / f"handoff-desk-{request.node.name[-40:]}"
    shutil.rmtree(run, ignore_errors=True)
    yield run
    for path in desk_dir(HostPaths(run=run)).glob("*.json"):
        pid = DeskJournal.load(path).qemu_pid
        if pid is not None and Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
    handoff(run, "recover")
    SHM.unlink(missing_ok=True)
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(run.parent / f"{run.name}-work", ignore_errors=True)


def ccid() -> tuple[str, Path] | None:
    """The testbed's usb-ccid: its sysfs name and /dev/bus/usb node (None: not there)."""
    for entry in Path("/sys/bus/usb/devices").iterdir():
        try:
            vid, pid = (entry / "idVendor").read_text().strip(), (entry / "idProduct").read_text()
        except OSError:
            continue
        if f"{vid}:{pid.strip()}" == devices.USB_CCID:
            bus, dev = (int((entry / k).read_text()) for k in ("busnum", "devnum"))
            return entry.name, Path(f"/dev/bus/usb/{bus:03d}/{dev:03d}")
    return None


def last(serial: Path, prefix: str) -> str | None:
    """The last complete line L2 printed starting with ``prefix`` (one still being written
    to the serial log is not read)."""
    text = serial.read_text(errors="replace") if serial.exists() else ""
    complete = text[: text.rfind("\n") + 1]
    lines = [x for x in complete.splitlines() if x.startswith(prefix)]
    return lines[-1] if lines else None


# The systemd boot: its root is switch_root'ed, so nobody may create the user namespace
# virtiofsd runs in (the classic boot chroots, where the kernel refuses one: see
# test_a_qemu_crash_leaves_no_virtiofsd for what handoff does then).
@pytest.mark.realkernel(init="systemd")
@pytest.mark.usefixtures("systemd_boot")
def test_a_nested_guest_writes_bar2_sees_the_usb_device_across_a_replug_and_uses_the_shares(
    run_dir: Path,
) -> None:
    nobody = pwd.getpwnam(OWNER)
    work = run_dir.parent / f"{run_dir.name}-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o755)
    vmlinuz, initrd = build_l2(work, L2_DESK_INIT, L2_DESK_MODULES)
    out_dir, rw, ro = work / "out", work / "rw", work / "ro"
    for folder in (out_dir, rw, ro):
        folder.mkdir()
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    (rw / "from-host.txt").write_text("hello from the host\n")
    (ro / "from-host.txt").write_text("read only\n")
    serial = out_dir / "l2-serial.log"
    extra = ", ".join(json.dumps(a) for a in (
        "-kernel", str(vmlinuz), "-initrd", str(initrd),
        "-append", "console=ttyS0 quiet panic=-1", "-serial", f"file:{serial}"))
    path = work / f"{NAME}.toml"
    path.write_text(profile_text(
        f'[[usb]]\ndevice = "{devices.USB_CCID}"\n'
        f'[[share]]\npath = "{rw}"\ntag = "rw"\n'
        f'[[share]]\npath = "{ro}"\ntag = "ro"\nreadonly = true\n',
        vm=f'user = "{OWNER}"\nextra_args = [{extra}]\n'))
    found = ccid()
    assert found is not None, "the testbed's usb-ccid"
    name, node = found
    assert node.stat().st_uid == 0
    session = start(run_dir, path)
    try:
        banner = "".join(wait_for_line(session, "running"))
        assert f"on the desktop run: looking-glass-client -f {SHM} -s" in banner
        assert f"USB: usb device {devices.USB_CCID}: {name}" in banner
        st = SHM.stat()
        assert (st.st_size, st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (
            32 * MIB, nobody.pw_uid, nobody.pw_gid, "0o660")
        assert (node.stat().st_uid, node.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
        status = handoff(run_dir, "status", NAME, "--json")
        resources = json.loads(status.stdout)["resources"]
        assert resources["looking-glass"]["client"] == f"looking-glass-client -f {SHM} -s"
        # Looking Glass: L2 wrote BAR 2; nobody reads it from the file.
        seen = guest.wait_for(lambda: last(serial, "L2LG"), "L2 writing BAR 2", GUEST_WAIT)
        assert seen == f"L2LG bar2={32 * MIB} first=0x4B534544"
        assert read_as_owner("dd", f"if={SHM}", "bs=12", "count=1", "status=none") == \
            b"DESKFROML2!!"
        assert read_as_owner("dd", f"if={SHM}", "bs=1", f"skip={32 * MIB - 64}", "count=4",
                             "status=none") == b"END!"
        # Shares: read and written as nobody; the read-only one refuses.
        assert guest.wait_for(lambda: last(serial, "L2SHARERO write="), "L2's read-only share",
                              GUEST_WAIT) == "L2SHARERO write=1"
        assert last(serial, "L2SHARE read=") == "L2SHARE read=hello from the host"
        assert last(serial, "L2SHARE wrote=") == "L2SHARE wrote=0"
        assert last(serial, "L2SHARERO read=") == "L2SHARERO read=read only"
        written = rw / "from-l2.txt"
        assert written.read_text() == "from-l2\n"
        assert written.stat().st_uid == nobody.pw_uid
        assert not (ro / "from-l2.txt").exists()
        # USB: there, gone with the port disabled, back with it enabled (a new node).
        here = f"L2USB {devices.USB_CCID}"
        guest.wait_for(lambda: last(serial, "L2USB") == here, "L2 seeing the ccid", GUEST_WAIT)
        usb = json.loads(handoff(run_dir, "status", NAME, "--json").stdout)["resources"]["usb"]
        assert usb["devices"] == [{"entry": f"usb device {devices.USB_CCID}",
                                   "host": [f"{name} {node}"], "attached": True}]
        # Unplugged: its xHCI leaves its driver (every device on it is gone for the
        # host, as if pulled); plugged: bound again, the device enumerates anew.
        controller = next(p for p in (Path("/sys/bus/usb/devices") / name).resolve().parents
                          if (p / "driver").is_symlink() and (p / "vendor").exists())
        driver = (controller / "driver").resolve()
        (driver / "unbind").write_text(controller.name)
        guest.wait_for(lambda: last(serial, "L2USB") == "L2USB", "L2 losing the ccid", 300)
        (driver / "bind").write_text(controller.name)
        guest.wait_for(lambda: last(serial, "L2USB") == here, "L2 seeing it again", 300)
        replugged = ccid()
        assert replugged is not None
        assert replugged[1].stat().st_uid == nobody.pw_uid
        session.send_signal(signal.SIGINT)
        out, _ = session.communicate(timeout=WAIT)  # the ladder ends it
        assert session.returncode == 130, out
    finally:
        end(session)
    assert not SHM.exists()
    assert not virtiofsd_pids()
    after = ccid()
    assert after is not None
    assert (after[1].stat().st_uid, after[1].stat().st_gid) == (0, 0)
    assert not list(desk_dir(HostPaths(run=run_dir)).glob("*.json"))
    shutil.rmtree(work, ignore_errors=True)


def test_a_stale_file_is_replaced_and_a_killed_supervisor_leaves_nothing_after_recover(
    tmp_path: Path, run_dir: Path
) -> None:
    SHM.write_bytes(b"stale" * 1000)  # root's, 0644, 5000 bytes
    folder = tmp_path / "share"
    folder.mkdir()
    path = tmp_path / f"{NAME}.toml"
    path.write_text(profile_text(f'[[share]]\npath = "{folder}"\ntag = "rw"\n'))
    session = start(run_dir, path)
    try:
        out = "".join(wait_for_line(session, "running"))
        assert f"replaced a stale {SHM}" in out
        st = SHM.stat()
        assert (st.st_size, st.st_uid) == (32 * MIB, pwd.getpwnam(OWNER).pw_uid)
        session.send_signal(signal.SIGKILL)
    finally:
        end(session)
    journals = {p.stem: DeskJournal.load(p) for p in desk_dir(HostPaths(run=run_dir)).glob("*")}
    qemu = journals[NAME].qemu_pid
    assert qemu is not None
    assert Path(f"/proc/{qemu}").exists()  # QEMU outlives its supervisor, on purpose
    assert virtiofsd_pids()  # and serves it still
    left = handoff(run_dir, "recover")
    assert f"its QEMU (pid {qemu}) still uses {SHM}" in left.stdout, left
    assert SHM.exists()
    os.kill(qemu, signal.SIGKILL)
    guest.wait_for(lambda: not Path(f"/proc/{qemu}").exists(), "QEMU gone", WAIT)
    guest.wait_for(lambda: not virtiofsd_pids(), "virtiofsd ending with QEMU", WAIT)
    done = handoff(run_dir, "recover")
    assert done.returncode == 0, done
    assert f"returned: removed {SHM} of {NAME}" in done.stdout
    assert not SHM.exists()
    assert not list(desk_dir(HostPaths(run=run_dir)).glob("*.json"))


def test_a_qemu_crash_leaves_no_virtiofsd(run_dir: Path) -> None:
    """Also: the classic boot chroots, so nobody (the folder's owner) may not create a user
    namespace; virtiofsd runs as root then, and the run says so."""
    work = run_dir.parent / f"{run_dir.name}-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o755)
    folder = work / "share"
    folder.mkdir()
    os.chown(folder, pwd.getpwnam(OWNER).pw_uid, pwd.getpwnam(OWNER).pw_gid)
    path = work / f"{NAME}.toml"
    path.write_text(profile_text(f'[[share]]\npath = "{folder}"\ntag = "rw"\n'))
    session = start(run_dir, path)
    try:
        banner = "".join(wait_for_line(session, "running"))
        assert f"share: {OWNER} may not create a user namespace here (" in banner
        assert f"virtiofsd for {folder} runs as root" in banner
        (journal,) = [p for p in desk_dir(HostPaths(run=run_dir)).glob("*.json")
                      if p.stem == f"{NAME}+shares"]
        qemu = DeskJournal.load(journal).qemu_pid
        assert qemu is not None
        assert virtiofsd_pids()
        os.kill(qemu, signal.SIGKILL)
        out, _ = session.communicate(timeout=WAIT)  # the session ends by itself
        assert session.returncode == 1, out
        assert "released shares" in out
    finally:
        end(session)
    assert not virtiofsd_pids()
    assert not SHM.exists()
    shutil.rmtree(work, ignore_errors=True)


def test_a_regular_file_where_kvmfr_should_be_is_refused_with_nothing_changed(
    tmp_path: Path, run_dir: Path
) -> None:
    fake = Path("/dev/kvmfr7")
    fake.write_bytes(b"not a device")
    path = tmp_path / f"{NAME}.toml"
    path.write_text(profile_text('device = "kvmfr"\nkvmfr_index = 7\n'))
    try:
        refused = handoff(run_dir, "run", str(path))
        assert refused.returncode == 2, refused
        assert "/dev/kvmfr7 is a regular file, not the kvmfr module's character device" in \
            refused.stderr
        assert "modprobe kvmfr static_size_mb=32,32,32,32,32,32,32,32" in refused.stderr
        assert fake.read_bytes() == b"not a device"
        assert not (run_dir / NAME).exists()
        assert not list(desk_dir(HostPaths(run=run_dir)).glob("*.json"))
    finally:
        fake.unlink()
