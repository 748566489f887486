"""The ``virtio-e2e`` arm of input_latency.py: uinput source → handoff's virtio proxy → guest ring.

Observation point: QEMU's ``virtqueue_flush`` trace event, i.e. the moment
QEMU has written an input event into the guest's virtio ring. Every arm ends
in the same function (``virtio_input_send``), so the end point is the same
for all of them; the input-layer trace (``input_event_*``) would not do,
because ``virtio-input-host-pci`` reads its evdev node itself and never
enters QEMU's input layer. ``virtio_input_send`` drops every event while no
guest driver has the device (``vi->active``), so a small Linux guest (the
testbed's kernel + busybox, the nested-guest test's initramfs builder with an
init that only loads virtio_input and waits) runs with three mice:

- **anchor**: mouse A read by ``-object input-linux`` into QEMU's input layer,
  delivered by ``virtio-mouse-pci`` (the issue's baseline);
- **raw**: mouse C read by ``virtio-input-host-pci`` directly (the same QEMU
  device as handoff's, without handoff: the floor of the virtio path);
- **handoff**: mouse B read by handoff's router (the supervisor's
  ``InputRouter``) and copied into handoff's ``VirtioProxies``, which
  ``virtio-input-host-pci`` reads (as the session plan's argv gives it).

One driver process writes A, C and B in that order in the same instant
(a few µs apart); latency = write time → the ``virtqueue_flush`` of the
frame's SYN_REPORT on that device's event queue (each frame is two ring
elements: the motion and its SYN). Which queue is which device is learnt
from one calibration frame per mouse, a second apart, before the run.

``--burst``: handoff's mouse at ``--hz`` (REL_X + REL_Y every frame) plus a
key tap every 97 frames and a click every 389 for ``--seconds``; the ring
elements QEMU wrote for handoff's two proxies are counted against what the
driver wrote, and the motion handoff wrote into the proxy is summed (QEMU's
trace shows no values: elements exact + the copy exact = motion exact).
``virtio_input_queue_full`` counts batches QEMU dropped because the guest
had no free buffers (the guest's speed, not the path's).
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handoff.input.edge import InputRouter
from handoff.input.router import RouterCore
from handoff.input.translate import Event
from handoff.input.virtio import VirtioProxies
from handoff.profile import InputMode

FLUSH = re.compile(
    r"^\d+@([\d.]+):(virtqueue_flush vq (0x[0-9a-f]+) count (\d+)|virtio_input_queue_full)"
)
EV_KEY, EV_REL, REL_X, REL_Y = 1, 2, 0, 1

#: The guest: load the modules, wait until every virtio input device has an
#: event node, say so; nothing reads the nodes (the guest kernel's driver
#: still takes every event off the ring and gives the buffer back).
L2_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /modules/$m; done
want=$(tr ' ' '\n' < /proc/cmdline | grep '^l2expect=' | cut -d= -f2)
n=0
count() { cat /sys/class/input/event*/device/name 2>/dev/null | grep -ci -e virtio -e bench; }
until [ "$(count)" -ge "$want" ] || [ $n -gt 900 ]; do
  sleep 0.2; n=$((n+1))
done
for e in /sys/class/input/event*; do echo "L2DEV $(basename $e) $(cat $e/device/name)"; done
echo L2READY
while true; do sleep 30; done
"""

DRIVER = r"""
import json, sys, time
from evdev import UInput, ecodes as e
mode, hz, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
caps = {e.EV_KEY: [e.BTN_LEFT, e.BTN_RIGHT], e.EV_REL: [e.REL_X, e.REL_Y, e.REL_WHEEL]}
mice = {n: UInput(caps, name=f"bench mouse {n}") for n in "acb"}
kbds = {n: UInput({e.EV_KEY: list(range(1, 128))}, name=f"bench keyboard {n}") for n in "jk"}
devices = {**mice, **kbds}
print(json.dumps({n: d.device.path for n, d in devices.items()}), flush=True)
sys.stdin.readline()
calibration = {}
for n in (("a", "c", "b") if mode == "latency" else ("a", "j", "b", "k")):
    calibration[n] = time.time()
    if n in mice:
        mice[n].write(e.EV_REL, e.REL_X, 1); mice[n].syn()
    else:
        kbds[n].write(e.EV_KEY, e.KEY_ESC, 1); kbds[n].syn()
        kbds[n].write(e.EV_KEY, e.KEY_ESC, 0); kbds[n].syn()
    time.sleep(1.5)
sent, keys, moved = [], 0, 0
t0 = time.time()
for i in range(count):
    due = t0 + i / hz
    ahead = due - time.time()
    if ahead > 0:
        time.sleep(ahead)
    v = i % 50 + 1
    if mode == "latency":
        now = time.time()
        for n in "acb":
            mice[n].write(e.EV_REL, e.REL_X, v); mice[n].syn()
        sent.append(now)
        continue
    moved += v
    for m, k in ((mice["a"], kbds["j"]), (mice["b"], kbds["k"])):
        m.write(e.EV_REL, e.REL_X, v); m.write(e.EV_REL, e.REL_Y, -v); m.syn()
        if i % 97 == 0:
            code = 30 + (i // 97) % 10
            k.write(e.EV_KEY, code, 1); k.syn(); k.write(e.EV_KEY, code, 0); k.syn()
        if i % 389 == 0:
            m.write(e.EV_KEY, e.BTN_RIGHT, 1); m.syn(); m.write(e.EV_KEY, e.BTN_RIGHT, 0); m.syn()
    keys += 2 * (i % 97 == 0) + 2 * (i % 389 == 0)
elapsed = time.time() - t0
time.sleep(3.0)
print(json.dumps({"sent": sent, "keys": keys, "moved": moved, "elapsed": elapsed,
                  "calibration": calibration}), flush=True)
sys.stdin.readline()
"""


class CountingProxies(VirtioProxies):
    """handoff's proxies, summing the motion and counting the key events copied in."""

    def __init__(self, session: str) -> None:
        super().__init__(session)
        self.motion = {REL_X: 0, REL_Y: 0}
        self.keys = 0

    def submit(self, device: str, events: Sequence[Event]) -> None:
        for etype, code, value in events:
            if etype == EV_REL and code in self.motion:
                self.motion[code] += value
            elif etype == EV_KEY and value in (0, 1):
                self.keys += 1
        super().submit(device, events)


def parse_flushes(path: Path) -> tuple[dict[str, list[float]], list[float]]:
    """Ring elements written per virtqueue (one timestamp each) and queue-full drops."""
    flushes: dict[str, list[float]] = defaultdict(list)
    full: list[float] = []
    for line in path.read_text().splitlines():
        m = FLUSH.match(line)
        if not m:
            continue
        if m[3] is None:
            full.append(float(m[1]))
        else:
            flushes[m[3]].extend([float(m[1])] * int(m[4]))
    return flushes, full


def first_queue_after(flushes: dict[str, list[float]], start: float, taken: set[str]) -> str:
    """The queue that wrote the first element after ``start`` (a calibration frame)."""
    candidates = [(next(t for t in ts if t >= start), vq) for vq, ts in flushes.items()
                  if vq not in taken and any(t >= start for t in ts)]  # fmt: skip
    if not candidates:
        raise SystemExit(f"no ring element after the calibration frame at {start:.3f}")
    return min(candidates)[1]


def frame_latencies(
    sent: list[float], elements: list[float], start: float
) -> tuple[list[float], int]:
    """µs from each frame's write to its SYN's ring element, for the frames that arrived.

    ``elements``: the queue's, from the calibration frame on (its two first).
    Elements come in pairs (motion, SYN) and QEMU drops whole batches when the
    guest's ring is full, so every second element is a SYN; each is the
    frame written last before it (the rate is low enough that a frame's
    latency stays under the spacing: :func:`run` warns when one comes near).
    Also returns how many SYNs fell on a frame already matched (a frame later
    than the spacing: 0 in a sound run).
    """
    syns = [t for t in elements if t >= start][2:][1::2]
    out, used, clashes = [], set(), 0
    for t in syns:
        i = bisect.bisect_right(sent, t) - 1
        if i >= 0 and i not in used:
            used.add(i)
            out.append((t - sent[i]) * 1e6)
        else:
            clashes += 1
    return sorted(out), clashes


def start_l2(
    workdir: Path, extra: Sequence[str], expect: int
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    from tests.testbed.test_input_virtio_guest import build_l2

    vmlinuz, initrd = build_l2(workdir, L2_INIT)
    serial, trace = workdir / "serial.log", workdir / "trace.log"
    argv = [
        "qemu-system-x86_64", "-nodefaults", "-machine", "q35", "-accel", "tcg", "-m", "192",
        "-smp", "1", "-display", "none", "-kernel", str(vmlinuz), "-initrd", str(initrd),
        "-append", f"console=ttyS0 quiet panic=-1 l2expect={expect}",
        "-serial", f"file:{serial}",
        "-trace", "virtqueue_flush", "-trace", "virtio_input_queue_full",
        "-D", str(trace), "-msg", "timestamp=on", *extra,
    ]  # fmt: skip
    return subprocess.Popen(argv), serial, trace


def ready(serial: Path) -> bool:
    return serial.exists() and "L2READY" in serial.read_text(errors="replace")


async def wait_ready(serial: Path, limit: float = 900) -> None:
    started = time.monotonic()
    with trio.fail_after(limit):
        while not ready(serial):  # noqa: ASYNC110 (a file another process writes)
            await trio.sleep(1)
    print(f"guest ready after {time.monotonic() - started:.0f} s", flush=True)


async def run(args: argparse.Namespace, summary: Any, ratio: Any) -> None:
    from evdev import InputDevice

    mode = "burst" if args.burst else "latency"
    count = args.frames if mode == "latency" else int(args.seconds * args.hz)
    driver = subprocess.Popen(  # noqa: ASYNC220 (a helper that lives for the whole run)
        [sys.executable, "-c", DRIVER, mode, str(args.hz), str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert driver.stdin is not None
    assert driver.stdout is not None
    paths = json.loads(driver.stdout.readline())
    proxies = CountingProxies("bench")
    proxies.create()
    keyboard_node, mouse_node = proxies.nodes
    with tempfile.TemporaryDirectory() as tmp:
        extra = [
            "-object", f"input-linux,id=il0,evdev={paths['a']}",
            "-device", "virtio-mouse-pci,id=anchor",
            "-object", f"input-linux,id=il1,evdev={paths['j']}",
            "-device", "virtio-keyboard-pci,id=anchork",
            "-device", f"virtio-input-host-pci,id=raw,evdev={paths['c']}",
            "-device", f"virtio-input-host-pci,id=hk,evdev={keyboard_node}",
            "-device", f"virtio-input-host-pci,id=hm,evdev={mouse_node}",
        ]  # fmt: skip
        qemu, serial, trace = start_l2(Path(tmp), extra, expect=5)
        try:
            await wait_ready(serial)
            router = InputRouter(RouterCore({29, 97}, InputMode.GUEST), proxies)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(router.run_device, "b", InputDevice(paths["b"]))
                nursery.start_soon(router.run_device, "k", InputDevice(paths["k"]))
                await trio.sleep(1.0)  # grabs done
                cpu0, wall0 = time.process_time(), time.monotonic()
                driver.stdin.write("go\n")
                driver.stdin.flush()
                line = await trio.to_thread.run_sync(driver.stdout.readline)
                cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
                router.close()
                nursery.cancel_scope.cancel()
            await trio.sleep(2.0)  # the guest's last buffers
        finally:
            qemu.terminate()
            qemu.wait(60)
            driver.stdin.write("done\n")
            driver.stdin.flush()
            driver.wait(30)
            proxies.destroy()
        result = json.loads(line)
        flushes, full = parse_flushes(trace)
    cal = result["calibration"]
    taken: set[str] = set()
    queues = {}
    for name in sorted(cal, key=cal.get):
        queues[name] = first_queue_after(flushes, cal[name], taken)
        taken.add(queues[name])
    seen = {n: [t for t in flushes[q] if t >= cal[n]] for n, q in queues.items()}
    elapsed = result["elapsed"]
    print(f"driver: {count} frames in {elapsed:.1f} s ({count / elapsed:.0f} Hz); "
          f"ring full (batches QEMU dropped: the guest had no free buffer) {len(full)}; "
          f"SYN_DROPPED at handoff's sources {router.dropped}; "
          f"handoff cpu {cpu:.1f} s / {wall:.1f} s wall")  # fmt: skip
    if mode == "latency":
        want = 2 + 2 * count  # calibration, then REL_X + SYN per frame
        arms = {}
        for name, label in (("a", "input-linux → virtio-mouse"), ("c", "virtio-input-host (raw)"),
                            ("b", "handoff virtio (proxy)")):  # fmt: skip
            arms[name], clashes = frame_latencies(result["sent"], seen[name], cal[name])
            dropped = (want - len(seen[name])) // 2
            print(summary(label, arms[name], f"{dropped} dropped at the full ring"))
            if clashes or (arms[name] and arms[name][-1] > 0.5e6 / args.hz):
                print(f"  WARNING: {clashes} late frames, max {arms[name][-1]:.0f} µs: lower --hz")
        print(ratio("handoff / input-linux", arms["b"], arms["a"]))
        print(ratio("handoff / raw virtio-input-host", arms["b"], arms["c"]))
        return
    clicks, taps = len(range(0, count, 389)), len(range(0, count, 97))
    want_mouse = 2 + 3 * count + 4 * clicks  # REL_X, REL_Y, SYN a frame; BTN, SYN twice a click
    want_kbd = 4 + 4 * taps  # KEY, SYN twice a tap (uinput adds no MSC_SCAN)
    for label, mouse, kbd in (("input-linux → virtio", "a", "j"), ("handoff virtio", "b", "k")):
        lost_mouse, lost_kbd = want_mouse - len(seen[mouse]), want_kbd - len(seen[kbd])
        print(
            f"burst {label:<22} mouse ring elements {len(seen[mouse])}/{want_mouse} "
            f"(lost {lost_mouse}), keyboard {len(seen[kbd])}/{want_kbd} (lost {lost_kbd})"
        )
    moved = result["moved"]
    print(
        f"burst handoff's copy: key+button events {proxies.keys - 2} of {result['keys']}, "
        f"motion x {proxies.motion[REL_X] - 1} of {moved}, y {proxies.motion[REL_Y]} of {-moved}"
    )
