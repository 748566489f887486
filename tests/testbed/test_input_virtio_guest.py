"""The virtio backend end to end: a nested guest kernel prints the events it receives.

QEMU's virtio-input drops events while no guest driver is active (no trace
shows them), so the proof needs a guest: the testbed's own Debian kernel
boots in a nested QEMU (L2) with a busybox initramfs that loads virtio_input
and evdev and hexdumps every /dev/input/eventN on its serial console (hexdump reads
through stdio, which waits for a full buffer, so padding events follow the
ones under test). The
supervisor's uinput proxies are its devices; events typed on uinput devices
in the testbed must come out there unchanged (hi-res and horizontal wheels,
extra buttons included). L2 boots TCG inside TCG: minutes, not seconds.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from handoff.control import ControlCommands
from handoff.host import HostPaths
from handoff.input.resource import InputHandoff
from handoff.profile import Input, InputBackend, InputMode, Profile
from handoff.profile import Vm as VmSpec
from handoff.qemu.process import QemuProcess
from handoff.qemu.qmp import open_qmp

from .test_input_realkernel import (
    BTN_EXTRA,
    EV_KEY,
    EV_REL,
    KBD_NAME,
    KEY_A,
    KEY_B,
    MOUSE_NAME,
    REL_HWHEEL,
    REL_WHEEL_HI_RES,
    REL_X,
    Vm,
    grabbed,
    make_keyboard,
    make_mouse,
    tap,
)

pytestmark = [
    pytest.mark.realkernel,
    pytest.mark.skipif(
        not os.path.exists("/dev/uinput"), reason="needs /dev/uinput: run in the testbed VM"
    ),
    # Opt-in while it fails: L2 boots (~200 s), binds virtio_input to both
    # proxies ("handoff virtio keyboard (tbv)" as event1), QEMU holds them,
    # handoff grabs the sources and copies into the proxies (proven without
    # QEMU in test_input_realkernel), yet L2's hexdump prints no event. Not
    # yet known whether QEMU's virtio-input-host, the copy while QEMU holds
    # the grab, or the busybox reader is at fault (issue 6).
    pytest.mark.skipif(
        os.environ.get("HANDOFF_L2_INPUT") != "1",
        reason="experimental, opt in with HANDOFF_L2_INPUT=1 (takes ~6 min)",
    ),
]

KERNEL_CACHE = Path(os.environ.get("TESTBED_CACHE", "/var/cache/handoff-testbed")) / "kernel"
REL_HWHEEL_HI_RES = 12
L2_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /modules/$m; done
n=0
while [ "$(ls /dev/input/ 2>/dev/null | grep -c event)" -lt 2 ] && [ $n -lt 600 ]; do
  sleep 0.2; n=$((n+1))
done
for e in /sys/class/input/event*; do echo "L2DEV $(basename $e) $(cat $e/device/name)"; done
for d in /dev/input/event*; do
  hexdump -v -e "\"L2EV $(basename $d) \" 24/1 \"%02x\" \"\n\"" $d &
done
echo L2READY
while true; do sleep 3600; done
"""


def build_initramfs(workdir: Path) -> tuple[Path, Path]:
    """The testbed kernel's vmlinuz and a busybox initramfs with virtio_input + evdev."""
    (root,) = [p for p in KERNEL_CACHE.iterdir() if (p / "kernel.json").exists()]
    release = json.loads((root / "kernel.json").read_text())["release"]
    depends = subprocess.run(
        ["modprobe", "-d", str(root), "-S", release, "-a", "--show-depends",
         "virtio_pci", "virtio_input", "evdev"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    tree = workdir / "l2root"
    for sub in ("bin", "proc", "sys", "dev", "modules"):
        (tree / sub).mkdir(parents=True)
    shutil.copy("/bin/busybox", tree / "bin" / "busybox")
    order: list[str] = []
    for line in depends.splitlines():
        parts = line.split()
        if parts and parts[0] == "insmod" and Path(parts[1]).name not in order:
            shutil.copy(parts[1], tree / "modules" / Path(parts[1]).name)
            order.append(Path(parts[1]).name)
    (tree / "modules.order").write_text("\n".join(order) + "\n")
    init = tree / "init"
    init.write_text(L2_INIT)
    init.chmod(0o755)
    files = subprocess.run(["find", "."], cwd=tree, check=True, capture_output=True).stdout
    archive = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=files, check=True,
        capture_output=True,
    ).stdout  # fmt: skip
    initrd = workdir / "l2.gz"
    initrd.write_bytes(gzip.compress(archive))
    return root / "boot" / f"vmlinuz-{release}", initrd


def l2_events(serial: Path, node: str) -> list[tuple[int, int, int]]:
    """(type, code, value) the L2 kernel delivered on ``node`` (SYN_REPORTs left out)."""
    out = []
    for line in serial.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "L2EV" and parts[1] == node and len(parts[2]) == 48:
            raw = bytes.fromhex(parts[2])
            etype = int.from_bytes(raw[16:18], "little")
            code = int.from_bytes(raw[18:20], "little")
            value = int.from_bytes(raw[20:24], "little", signed=True)
            if etype != 0 and not (etype == EV_KEY and value == 2):  # L2's own repeat
                out.append((etype, code, value))
    return out


def l2_node(serial: Path, name: str) -> str | None:
    for line in serial.read_text(errors="replace").splitlines():
        if line.startswith("L2DEV ") and name in line:
            return line.split()[1]
    return None


async def until(condition: Callable[[], bool], what: str, limit: float) -> None:
    with trio.move_on_after(limit):
        while not condition():  # noqa: ASYNC110 (a file another process writes)
            await trio.sleep(0.2)
        return
    raise AssertionError(f"timed out after {limit:g} s waiting for {what}")


async def test_a_nested_guest_receives_the_virtio_proxies_events_unchanged(
    tmp_path: Path,
) -> None:
    vmlinuz, initrd = build_initramfs(tmp_path)
    keyboard, mouse = make_keyboard(), make_mouse()
    profile = Profile(
        vm=VmSpec(name="tbv", memory_mib=192),
        source=Path("tbv.toml"),
        input=Input(
            backend=InputBackend.VIRTIO,
            start_in=InputMode.GUEST,
            devices=(f"name:{KBD_NAME}", f"name:{MOUSE_NAME}"),
        ),
    )
    resource = InputHandoff(profile, HostPaths(run=tmp_path / "run"))
    await resource.acquire()
    serial = tmp_path / "serial.log"
    ours, theirs = socket.socketpair()
    argv = [
        "qemu-system-x86_64", "-nodefaults", "-machine", "q35", "-accel", "tcg", "-m", "192",
        "-smp", "1", "-display", "none", "-kernel", str(vmlinuz), "-initrd", str(initrd),
        "-append", "console=ttyS0 quiet panic=-1", "-serial", f"file:{serial}",
        "-chardev", f"socket,id=qmp,fd={theirs.fileno()}", "-mon", "chardev=qmp,mode=control",
        *resource.qemu_args(),
    ]  # fmt: skip
    process = await QemuProcess.start(
        argv, log_path=tmp_path / "qemu.log", pass_fds=[theirs.fileno()]
    )
    theirs.close()
    started = time.monotonic()
    try:
        async with open_qmp(ours) as qmp, trio.open_nursery() as nursery:
            await resource.vm_started(Vm(qmp, process.pid), nursery, ControlCommands())
            await until(lambda: serial.exists() and "L2READY" in serial.read_text(), "L2", 600)
            print(f"L2 ready after {time.monotonic() - started:.0f} s")
            kbd_node = l2_node(serial, "handoff virtio keyboard")
            mouse_node = l2_node(serial, "handoff virtio mouse")
            assert kbd_node
            assert mouse_node
            both = {KBD_NAME: True, MOUSE_NAME: True}
            await until(lambda: grabbed(resource) == both, "both devices grabbed", 60)

            tap(keyboard, KEY_A)
            frame = [
                (EV_KEY, BTN_EXTRA, 1),
                (EV_REL, REL_HWHEEL, -1),
                (EV_REL, REL_HWHEEL_HI_RES, -120),
                (EV_REL, REL_WHEEL_HI_RES, 30),
            ]
            for event in frame:
                mouse.write(*event)
            mouse.syn()
            mouse.write(EV_KEY, BTN_EXTRA, 0)
            mouse.syn()

            # busybox hexdump reads through stdio, which waits for a whole buffer
            # (4 KiB): padding events push the ones under test out to the console.
            for _ in range(100):
                tap(keyboard, KEY_B)
            for _ in range(250):
                mouse.write(EV_REL, REL_X, 1)
                mouse.syn()
            want_keys = [(EV_KEY, KEY_A, 1), (EV_KEY, KEY_A, 0)]
            want_mouse = [*frame, (EV_KEY, BTN_EXTRA, 0)]
            try:
                await until(
                    lambda: (
                        l2_events(serial, kbd_node)[:2] == want_keys
                        and l2_events(serial, mouse_node)[:5] == want_mouse
                    ),
                    "the events in L2",
                    120,
                )
            except AssertionError:
                text = serial.read_text(errors="replace").splitlines()
                raise AssertionError(
                    f"L2 saw keyboard {l2_events(serial, kbd_node)} "
                    f"mouse {l2_events(serial, mouse_node)}; serial tail: {text[-30:]}"
                ) from None
            nursery.cancel_scope.cancel()
            await qmp.execute("quit")
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await resource.release()
        keyboard.close()
        mouse.close()
