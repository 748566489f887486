"""Live GPU hand-off on a real kernel: the GPU lookalike (06.0 + 06.1, one IOMMU group)
moves between the testbed's drivers and a nested QEMU that runs firmware only.

- `handoff run` with the group ``live = true`` (q35's ACPI hotplug, the plan's
  choice): with no guest OS nobody ejects the slot, so `handoff gpu NAME host`
  is refused after its bound and nothing on the host changes; `handoff status
  --json` says the group is in the guest; the session's end returns it.
- The resource itself with native PCIe hotplug (which answers without an OS for
  a function it hot-plugged): real vfio-pci functions device_add'ed into the
  plan's root port, then to the host (bochs-drm and snd_hda_intel bind again,
  QEMU closes /dev/vfio/N) and back (vfio-pci, query-pci lists both).
- The same with the session's resources (live GPU and input, wired as
  ``handoff run`` wires them): a uinput keyboard types ``input.gpu_hotkey``
  and the group goes to the host, typed again back to the guest; with
  ``follow_gpu`` the input mode follows each move.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import trio

from handoff.base.host import HostPaths
from handoff.base.run_layout import qemu_socket_dir
from handoff.control.protocol import Side
from handoff.control.server import ControlCommands
from handoff.input.resource import InputHandoff
from handoff.live.guest import attach, guest_ids
from handoff.live.resource import LiveGpu
from handoff.live.sequence import live_slots
from handoff.pci.address import PciAddress
from handoff.pci.sysfs import read_device
from handoff.profile import Accelerator, Profile, load_profile
from handoff.qemu.process import QemuProcess
from handoff.qemu.qmp import open_qmp
from handoff.session.host_facts import gather_host_facts
from handoff.session.plan import HostFacts, plan_session
from handoff.session.supervisor import default_resources
from tests.guest_initramfs import build_initramfs, cached_kernel
from tests.lines import wait_for_line as read_lines
from tests.qemu.test_live_qmp import NATIVE, Vm
from tests.testbed import devices, guest
from tests.testbed.test_input_realkernel import KBD_NAME, make_keyboard, tap

pytestmark = [pytest.mark.realkernel, pytest.mark.usefixtures("testbed_gpu", "testbed_uinput")]

CHECKOUT = Path(__file__).resolve().parents[2]
NAME = "livetb"
WAIT = 180.0  # a nested TCG QEMU inside TCG is slow; none of these is a timing assertion
State = dict[str, str | None]


def lookalike() -> tuple[PciAddress, PciAddress]:
    return devices.find_one(devices.BOCHS_DISPLAY), devices.find_one(devices.ICH9_HDA)


def drivers() -> State:
    return {a.short: read_device(HostPaths(), a).driver for a in lookalike()}


def host_drivers() -> State:
    vga, audio = lookalike()
    return {vga.short: "bochs-drm", audio.short: "snd_hda_intel"}


def on_vfio() -> State:
    return dict.fromkeys(drivers(), "vfio-pci")


def write_profile(tmp_path: Path) -> Path:
    vga, audio = lookalike()
    path = tmp_path / f"{NAME}.toml"
    path.write_text(
        f'[vm]\nname = "{NAME}"\nmemory = "64M"\ncpus = 1\naccel = "tcg"\n'
        'shutdown_timeout = 2\n'
        '[display]\nvga = "none"\nfrontend = "none"\n'
        f'[[passthrough]]\naddress = "{vga.short}"\nlive = true\n'
        f'[[passthrough]]\naddress = "{audio.short}"\nlive = true\n'
    )
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    run = tmp_path / "run"
    yield run
    guest.kill_recorded_qemus(run)
    handoff(run, "recover")


def handoff(run: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "handoff", *argv], env={**os.environ, "HANDOFF_RUN_DIR": str(run)},
        cwd=CHECKOUT, capture_output=True, text=True, check=False, timeout=WAIT,
    )


def wait_for_line(session: subprocess.Popen[str], text: str) -> list[str]:
    return read_lines(session, text, wait=WAIT)


def test_a_guest_without_an_os_keeps_the_gpu_and_the_host_is_unchanged(
    tmp_path: Path, run_dir: Path
) -> None:
    before = drivers()
    assert before == host_drivers()
    session = subprocess.Popen(
        [sys.executable, "-m", "handoff", "run", str(write_profile(tmp_path))],
        env={**os.environ, "HANDOFF_RUN_DIR": str(run_dir)}, cwd=CHECKOUT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_line(session, "running")
        assert drivers() == on_vfio()
        refused = handoff(run_dir, "gpu", NAME, "host", "--timeout", "5")
        assert refused.returncode == 2, refused
        assert "did not release" in refused.stderr
        assert "nothing on the host changed" in refused.stderr
        assert drivers() == on_vfio()
        status = json.loads(handoff(run_dir, "status", NAME, "--json").stdout)
        live = status["resources"]["live-gpu"]
        assert live["state"] == "guest"
        assert "did not release" in live["last_error"]
        assert handoff(run_dir, "stop", NAME).returncode == 0
        out, _ = session.communicate(timeout=WAIT)
        assert session.returncode == 0, out
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    assert drivers() == before  # a group in the guest returns at the end, as today


def nested_argv(profile: Profile, fd: int, run: Path) -> list[str]:
    """The plan's argv (vfio-pci functions hot-plugged later, see the module doc) with
    native hotplug, running firmware only."""
    facts = HostFacts(accel=Accelerator.TCG, accel_reason="testbed", supervisor_uid=0)
    argv = list(plan_session(profile, facts, HostPaths(run=run)).argv_with_monitor_fd(fd))
    out: list[str] = []
    for value in argv:
        if value.startswith("vfio-pci,"):
            out.pop()
            continue
        out.append(value)
    return [a for a in out if a != "-S"] + list(NATIVE)


@contextlib.asynccontextmanager
async def nested(profile: Profile, run: Path, log: Path) -> AsyncIterator[Vm]:
    ours, theirs = socket.socketpair()
    process = await QemuProcess.start(nested_argv(profile, theirs.fileno(), run), log_path=log,
                                      pass_fds=[theirs.fileno()])
    theirs.close()
    try:
        async with open_qmp(ours) as qmp, trio.open_nursery() as nursery:
            vm = Vm(process.pid, qmp)
            nursery.start_soon(vm.pump)
            yield vm
            with contextlib.suppress(Exception):
                await qmp.execute("quit")
            await process.wait()
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        ours.close()


async def test_the_group_goes_to_the_host_and_back_while_the_vm_runs(tmp_path: Path) -> None:
    profile = load_profile(write_profile(tmp_path))
    run = tmp_path / "run"
    paths = dataclasses.replace(HostPaths.from_environment(), run=run)
    slots = live_slots(profile.passthrough)
    ids = {i for slot in slots for i in slot.ids}
    live = LiveGpu(profile, paths, release_within=WAIT)
    await live.acquire()
    try:
        assert drivers() == on_vfio()
        async with nested(profile, run, tmp_path / "qemu.log") as vm:
            with trio.fail_after(WAIT):
                while "rp0" not in await guest_ids(vm):  # noqa: ASYNC110 (firmware numbering)
                    await trio.sleep(0.5)
                await trio.sleep(2)
                await attach(vm, vm, slots)  # the group in the guest: real vfio-pci functions
            live.note_qemu_pid(vm.pid)
            async with trio.open_nursery() as nursery:
                await live.vm_started(vm, nursery, ControlCommands())
                with trio.fail_after(WAIT):
                    await live.move(Side.HOST)
                assert live.status()["state"] == "host"
                assert drivers() == host_drivers()
                assert not await guest_ids(vm) & ids
                with trio.fail_after(WAIT):
                    await live.move(Side.GUEST)
                assert live.status()["state"] == "guest"
                assert drivers() == on_vfio()
                assert await guest_ids(vm) >= ids
                nursery.cancel_scope.cancel()
    finally:
        await live.release()
    assert drivers() == host_drivers()
    guest.wait_for(lambda: drivers() == host_drivers(), "the lookalike back on its drivers")


KEY_LEFTCTRL, KEY_LEFTALT, KEY_G = 29, 56, 34
HOTKEY_INPUT = (
    '[input]\nbackend = "qmp"\nstart_in = "guest"\nfollow_gpu = true\n'
    'hotkey = ["KEY_SCROLLLOCK"]\ngpu_hotkey = ["KEY_LEFTCTRL", "KEY_LEFTALT", "KEY_G"]\n'
    f'devices = ["name:{KBD_NAME}"]\n'
)


async def wait_until(probe: Callable[[], bool], what: str) -> None:
    """Poll ``probe()`` (state of other tasks and of the kernel), bounded by WAIT."""
    with trio.move_on_after(WAIT):
        while not probe():  # noqa: ASYNC110 (state of other tasks and of the kernel)
            await trio.sleep(0.1)
        return
    raise AssertionError(f"timed out after {WAIT:g} s waiting for {what}")


async def test_the_gpu_hotkey_on_a_uinput_keyboard_moves_the_group_and_input_follows(
    tmp_path: Path,
) -> None:
    path = write_profile(tmp_path)
    path.write_text(path.read_text() + HOTKEY_INPUT)
    profile = load_profile(path)
    run = tmp_path / "run"
    paths = dataclasses.replace(HostPaths.from_environment(), run=run)
    slots = live_slots(profile.passthrough)
    ids = {i for slot in slots for i in slot.ids}
    plan = plan_session(profile, gather_host_facts(profile, paths, strict=False), paths)
    live, inputs = default_resources(plan, paths)  # wired as `handoff run` wires them
    assert isinstance(live, LiveGpu)
    assert isinstance(inputs, InputHandoff)
    live.release_within = WAIT
    qemu_socket_dir(paths, NAME).mkdir(parents=True, exist_ok=True)  # the session's job
    keyboard = make_keyboard()
    await live.acquire()
    try:
        await inputs.acquire()
        async with nested(profile, run, tmp_path / "qemu.log") as vm:
            with trio.fail_after(WAIT):
                while "rp0" not in await guest_ids(vm):  # noqa: ASYNC110 (firmware numbering)
                    await trio.sleep(0.5)
                await trio.sleep(2)
                await attach(vm, vm, slots)  # the group in the guest: real vfio-pci functions
            live.note_qemu_pid(vm.pid)
            async with trio.open_nursery() as nursery:
                control = ControlCommands()
                await live.vm_started(vm, nursery, control)
                await inputs.vm_started(vm, nursery, control)
                await wait_until(lambda: inputs.status()["mode"] == "guest"
                                 and bool(inputs.status()["devices"]), "the keyboard grabbed")

                tap(keyboard, KEY_LEFTCTRL, KEY_LEFTALT, KEY_G)
                await wait_until(lambda: live.status()["state"] == "host", "the group on the host")
                assert drivers() == host_drivers()
                assert not await guest_ids(vm) & ids
                await wait_until(lambda: inputs.status()["mode"] == "host", "input on the host")

                tap(keyboard, KEY_LEFTCTRL, KEY_LEFTALT, KEY_G)
                await wait_until(lambda: live.status()["state"] == "guest",
                                 "the group in the guest")
                assert drivers() == on_vfio()
                assert await guest_ids(vm) >= ids
                await wait_until(lambda: inputs.status()["mode"] == "guest", "input in the guest")
                assert live.status()["last_error"] is None
                nursery.cancel_scope.cancel()
    finally:
        keyboard.close()
        await inputs.release()
        await live.release()
    guest.wait_for(lambda: drivers() == host_drivers(), "the lookalike back on its drivers")


# --------------------------------------------------------------------------- a real guest OS

# L2: the testbed's own kernel in a nested QEMU under `handoff run`, a busybox
# initramfs with bochs-drm and snd-hda-intel loaded at boot, printing on its
# serial console each change of what drives the lookalike's functions and
# whether /dev/fb0 exists. Part of every realkernel run (L2 boots in 2.5-4 min
# under TCG inside TCG); leave it out of a quick run with -k "not real_guest".
L2_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /modules/$m 2>/dev/null; done
echo L2READY
prev=""
while true; do
  cur=""
  for d in /sys/bus/pci/devices/*; do
    id="$(cat $d/vendor 2>/dev/null):$(cat $d/device 2>/dev/null)"
    case "$id" in
      0x1234:0x1111|0x8086:0x293e)
        drv="$(readlink $d/driver 2>/dev/null)"; cur="$cur $id=${drv##*/}";;
    esac
  done
  fb=no; [ -e /sys/class/graphics/fb0 ] && fb=yes
  cur="$cur fb0=$fb"
  [ "$cur" != "$prev" ] && echo "L2STATE$cur" && prev="$cur"
  sleep 1
done
"""
L2_MODULES = ("bochs", "snd_hda_intel")
GUEST_WAIT = 900.0  # L2's boot under TCG inside TCG on a loaded host


def build_l2(
    workdir: Path, init: str = L2_INIT, modules: tuple[str, ...] = L2_MODULES
) -> tuple[Path, Path]:
    """The testbed kernel's vmlinuz and a busybox initramfs running ``init`` (as /init)
    with ``modules`` (and their dependencies) in /modules, listed in load order in
    /modules.order."""
    kernel = cached_kernel()
    return kernel.vmlinuz, build_initramfs(workdir, kernel, init, modules=modules)


def l2_state(serial: Path) -> dict[str, str]:
    """The last state L2 printed: vendor:device -> driver ('' none), and fb0 yes/no."""
    lines = [line for line in serial.read_text(errors="replace").splitlines()
             if line.startswith("L2STATE")]
    if not lines:
        return {}
    return dict(item.split("=", 1) for item in lines[-1].split()[1:])


IN_L2 = {"0x1234:0x1111": "bochs-drm", "0x8086:0x293e": "snd_hda_intel", "fb0": "yes"}


def test_a_real_guest_gives_the_gpu_back_and_takes_it_again(
    tmp_path: Path, run_dir: Path
) -> None:
    vmlinuz, initrd = build_l2(tmp_path)
    serial = tmp_path / "l2-serial.log"
    extra = ", ".join(json.dumps(a) for a in (
        "-kernel", str(vmlinuz), "-initrd", str(initrd),
        "-append", "console=ttyS0 quiet panic=-1", "-serial", f"file:{serial}"))
    path = write_profile(tmp_path)
    text = path.read_text().replace('memory = "64M"', 'memory = "192M"')
    path.write_text(text.replace("shutdown_timeout = 2\n",
                                 f"shutdown_timeout = 2\nextra_args = [{extra}]\n"))
    before = drivers()
    session = subprocess.Popen(
        [sys.executable, "-m", "handoff", "run", str(path)],
        env={**os.environ, "HANDOFF_RUN_DIR": str(run_dir)}, cwd=CHECKOUT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_line(session, "running")
        guest.wait_for(lambda: l2_state(serial) == IN_L2, "L2 driving the lookalike (fb0)",
                       GUEST_WAIT)
        to_host = handoff(run_dir, "gpu", NAME, "host", "--timeout", "120")
        assert to_host.returncode == 0, to_host
        assert drivers() == host_drivers()  # the testbed's own drivers again
        guest.wait_for(lambda: l2_state(serial) == {"fb0": "no"}, "L2 reporting it gone", 120)
        status = json.loads(handoff(run_dir, "status", NAME, "--json").stdout)
        assert status["resources"]["live-gpu"]["state"] == "host"
        to_guest = handoff(run_dir, "gpu", NAME, "guest")
        assert to_guest.returncode == 0, to_guest
        assert drivers() == on_vfio()
        guest.wait_for(lambda: l2_state(serial) == IN_L2, "L2 binding bochs-drm again", 300)
        session.send_signal(signal.SIGINT)
        out, _ = session.communicate(timeout=WAIT)
        assert session.returncode == 130, out
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    assert drivers() == before
