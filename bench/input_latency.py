"""Input forwarding latency and loss, as ratios against a baseline measured in the same run.

Three measurements (each prints one summary line per arm and the ratio):

``host`` (this machine, real QEMU, no /dev/input needed)
    Frames fed in-process to handoff's qmp backend (QmpBackend +
    QmpSocketTransport) against the limit of the same QEMU: a minimal client
    writing pre-encoded ``input-send-event`` lines, at most 8 in flight.
    Latency = submit time → QEMU's ``input_event_rel`` trace timestamp.

``testbed`` (inside the testbed VM: uinput, evdev, EVIOCGRAB are real)
    Two uinput mice written by a driver process in the same instant: mouse A
    is read by QEMU's own ``-object input-linux`` (the anchor, axis x), mouse
    B by handoff (router + qmp backend, REL_Y → axis y), same QEMU, same run.
    Latency = evdev write time → trace timestamp. Goal: p50 ≤ 1.3x, p99 ≤ 2x.

``burst`` (testbed)
    A high-rate mouse (``--hz``, 8000 by default, as fast as the driver can)
    plus typing for ``--seconds``: key/button events lost (goal 0), motion
    sum error (goal 0), handoff's CPU (process time / wall time) and the
    driver's achieved rate.

    python bench/input_latency.py host [--frames 2000 --hz 1000]
    tests/testbed/testbed.sh -- .venv/bin/python bench/input_latency.py testbed
    tests/testbed/testbed.sh -- .venv/bin/python bench/input_latency.py burst --seconds 60
    tests/testbed/testbed.sh -- .venv/bin/python bench/input_latency.py virtio
    tests/testbed/testbed.sh -- .venv/bin/python bench/input_latency.py virtio-e2e [--burst]

``virtio`` (testbed)
    handoff's own cost on the virtio path: source evdev event → the copy in
    the uinput proxy (kernel timestamps on both ends). QEMU reads the proxy
    as input-linux reads a device, so add the anchor's latency.

``virtio-e2e`` (testbed, boots a small Linux guest; bench/virtio_e2e.py)
    The whole virtio path, source write → the event in the guest's virtio
    ring (QEMU's ``virtqueue_flush`` trace), against input-linux delivering
    to a virtio-mouse and virtio-input-host reading the source directly,
    same QEMU, same run. ``--burst``: handoff's path at ``--hz``, ring
    elements counted against what was written.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handoff.input.edge import InputRouter
from handoff.input.forward import QmpBackend, QmpSocketTransport
from handoff.input.router import RouterCore
from handoff.profile import InputMode
from handoff.qemu.wire import IN_FLIGHT

TRACE = re.compile(r"^\d+@([\d.]+):input_event_(rel|key_qcode|btn) (.*)$")
EV_KEY, EV_REL, REL_X, REL_Y = 1, 2, 0, 1


# --------------------------------------------------------------------------- helpers


class Qemu:
    """A running q35 (firmware only: input-send-event needs a running VM), traced."""

    def __init__(self, workdir: Path, extra: Sequence[str] = (), events: str = "input_event_*"):
        self.socket = workdir / "input.qmp"
        self.trace = workdir / "trace.log"
        for path in (self.socket, self.trace):
            path.unlink(missing_ok=True)
        argv = [
            "qemu-system-x86_64", "-nodefaults", "-machine", "q35", "-accel", "tcg",
            "-m", "32", "-display", "none",
            "-chardev", f"socket,id=in,path={self.socket},server=on,wait=off",
            "-mon", "chardev=in,mode=control",
            "-trace", events, "-D", str(self.trace), "-msg", "timestamp=on", *extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(argv)

    async def connect(self, in_flight: int = IN_FLIGHT) -> QmpSocketTransport:
        return await QmpSocketTransport.connect(self.socket, max_in_flight=in_flight)

    async def quit(self, transport: QmpSocketTransport) -> list[tuple[float, str, str]]:
        with trio.move_on_after(5):
            await transport._stream.send_all(b'{"execute":"quit"}\n')
        await trio.to_thread.run_sync(self.process.wait)
        return parse_trace(self.trace)


def parse_trace(path: Path) -> list[tuple[float, str, str]]:
    out = []
    for line in path.read_text().splitlines():
        m = TRACE.match(line)
        if m:
            out.append((float(m[1]), m[2], m[3]))
    return out


def rel_series(trace: list[tuple[float, str, str]], axis: str) -> list[tuple[float, int]]:
    """(timestamp, cumulative motion) for one axis."""
    series, total = [], 0
    for ts, kind, rest in trace:
        if kind == "rel" and f"axis {axis}," in rest:
            total += int(rest.rsplit("value ", 1)[1])
            series.append((ts, total))
    return series


def latencies(sent: list[tuple[float, int]], seen: list[tuple[float, int]]) -> list[float]:
    """For each sent frame (time, cumulative), µs until the trace's cumulative reached it."""
    out, j = [], 0
    for t_sent, cumulative in sent:
        while j < len(seen) and seen[j][1] < cumulative:
            j += 1
        if j == len(seen):
            break
        out.append((seen[j][0] - t_sent) * 1e6)
    return sorted(out)


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p * len(values)))] if values else float("nan")


def summary(name: str, lat: list[float], extra: str = "") -> str:
    return (f"{name:<28} frames {len(lat):>6}  p50 {pct(lat, .5):>9.0f} µs  "
            f"p90 {pct(lat, .9):>9.0f} µs  p99 {pct(lat, .99):>9.0f} µs  {extra}")  # fmt: skip


def ratio(name: str, ours: list[float], base: list[float]) -> str:
    return (f"{name}: p50 {pct(ours, .5) / pct(base, .5):.2f}x  "
            f"p99 {pct(ours, .99) / pct(base, .99):.2f}x")  # fmt: skip


async def drive(frames: int, hz: float, emit: Any) -> list[tuple[float, int]]:
    """Call ``emit(i, value)`` at ``hz``; returns (time, cumulative value) per frame."""
    sent, total = [], 0
    t0 = trio.current_time()
    for i in range(frames):
        await trio.sleep_until(t0 + i / hz)
        value = i % 50 + 1
        total += value
        sent.append((time.time(), total))
        emit(i, value)
    return sent


# --------------------------------------------------------------------------- host


async def host_arm(
    kind: str, frames: int, hz: float, workdir: Path, in_flight: int = IN_FLIGHT
) -> tuple[list[float], str]:
    qemu = Qemu(workdir)
    transport = await qemu.connect(in_flight if kind == "handoff" else 8)
    cpu0 = time.process_time()
    async with trio.open_nursery() as nursery:
        if kind == "handoff":
            backend = QmpBackend()
            nursery.start_soon(backend.run, transport)
            sent = await drive(frames, hz, lambda i, v: backend.submit("m", [(EV_REL, REL_X, v)]))
            with trio.fail_after(30):
                await backend.wait_idle(transport)
            info = f"requests {transport.sent} (coalesced {backend.queue.merged})"
        else:
            payloads = [
                json.dumps({"execute": "input-send-event", "arguments": {"events": [
                    {"type": "rel", "data": {"axis": "x", "value": i % 50 + 1}}]}}).encode() + b"\n"
                for i in range(frames)
            ]  # fmt: skip
            slots = trio.Semaphore(8)
            send_channel, receive_channel = trio.open_memory_channel[bytes](frames)

            writer_done = trio.Event()

            async def writer() -> None:
                async for payload in receive_channel:
                    await slots.acquire()
                    transport.idle.take()
                    await transport._stream.send_all(payload)
                writer_done.set()

            async def replies() -> None:
                while True:
                    await transport._read_reply()
                    slots.release()
                    transport.idle.done()

            nursery.start_soon(writer)
            nursery.start_soon(replies)
            sent = await drive(frames, hz, lambda i, v: send_channel.send_nowait(payloads[i]))
            send_channel.close()
            with trio.fail_after(30):
                await writer_done.wait()
                await transport.idle.wait()
            info = f"requests {frames}"
        cpu = time.process_time() - cpu0
        nursery.cancel_scope.cancel()
    trace = await qemu.quit(transport)
    seen = rel_series(trace, "x")
    motion_ok = seen[-1][1] == sent[-1][1] if seen else False
    return latencies(sent, seen), f"{info}  cpu {cpu:.2f} s  motion {'ok' if motion_ok else 'LOST'}"


async def host(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base, base_info = await host_arm("baseline", args.frames, args.hz, Path(tmp))
        ours, our_info = await host_arm("handoff", args.frames, args.hz, Path(tmp), args.in_flight)
    print(summary("minimal pre-encoded client", base, base_info))
    print(summary("handoff qmp backend", ours, our_info))
    print(ratio("handoff / minimal client", ours, base))


# --------------------------------------------------------------------------- testbed

DRIVER = r"""
import json, sys, time
from evdev import UInput, ecodes as e
mode, hz, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
mouse_caps = {e.EV_KEY: [e.BTN_LEFT, e.BTN_RIGHT], e.EV_REL: [e.REL_X, e.REL_Y, e.REL_WHEEL]}
a = UInput(mouse_caps, name="bench mouse a")
b = UInput(mouse_caps, name="bench mouse b")
k = UInput({e.EV_KEY: list(range(1, 128))}, name="bench keyboard")
print(json.dumps([a.device.path, b.device.path, k.device.path]), flush=True)
sys.stdin.readline()
sent, keys, moved = [], 0, 0
t0 = time.time()
for i in range(count):
    due = t0 + i / hz
    ahead = due - time.time()
    if ahead > 0:  # sleep, not spin: a real mouse costs the host no CPU to move
        time.sleep(ahead)
    v = i % 50 + 1
    if mode == "latency":
        now = time.time()
        a.write(e.EV_REL, e.REL_X, v); a.syn()
        b.write(e.EV_REL, e.REL_Y, v); b.syn()
        sent.append(now)
    else:
        b.write(e.EV_REL, e.REL_X, v); b.write(e.EV_REL, e.REL_Y, -v); b.syn()
        moved += v
        if i % 97 == 0:
            code = 30 + (i // 97) % 10
            k.write(e.EV_KEY, code, 1); k.syn(); k.write(e.EV_KEY, code, 0); k.syn()
            keys += 2
        if i % 389 == 0:
            b.write(e.EV_KEY, e.BTN_RIGHT, 1); b.syn(); b.write(e.EV_KEY, e.BTN_RIGHT, 0); b.syn()
            keys += 2
elapsed = time.time() - t0
time.sleep(1.0)
print(json.dumps({"sent": sent, "keys": keys, "moved": moved, "elapsed": elapsed}), flush=True)
sys.stdin.readline()
"""


async def testbed(args: argparse.Namespace, mode: str) -> None:
    from evdev import InputDevice

    count = args.frames if mode == "latency" else int(args.seconds * args.hz)
    driver = subprocess.Popen(  # noqa: ASYNC220 (a helper that lives for the whole run)
        [sys.executable, "-c", DRIVER, mode, str(args.hz), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert driver.stdin is not None
    assert driver.stdout is not None
    path_a, path_b, path_k = json.loads(driver.stdout.readline())
    with tempfile.TemporaryDirectory() as tmp:
        extra = ["-object", f"input-linux,id=il0,evdev={path_a}"] if mode == "latency" else []
        qemu = Qemu(Path(tmp), extra)
        transport = await qemu.connect(args.in_flight)
        backend = QmpBackend()
        router = InputRouter(RouterCore({29, 97}, InputMode.GUEST), backend)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend.run, transport)
            nursery.start_soon(router.run_device, "b", InputDevice(path_b))
            nursery.start_soon(router.run_device, "k", InputDevice(path_k))
            await trio.sleep(1.0)  # grabs done (input-linux grabbed mouse a at start)
            cpu0, wall0 = time.process_time(), time.monotonic()
            driver.stdin.write("go\n")
            driver.stdin.flush()
            line = await trio.to_thread.run_sync(driver.stdout.readline)
            with trio.move_on_after(120) as drain:
                await backend.wait_idle(transport)
            if drain.cancelled_caught:
                print(f"QEMU had not answered everything 120 s after the driver ended "
                      f"({len(backend.queue)} batches still queued)")  # fmt: skip
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            router.close()
            nursery.cancel_scope.cancel()
        driver.stdin.write("done\n")
        driver.stdin.flush()
        driver.wait(30)
        result = json.loads(line)
        trace = await qemu.quit(transport)
    if mode == "latency":
        cumulative, total = [], 0
        for n, t in enumerate(result["sent"]):
            total += n % 50 + 1
            cumulative.append((t, total))
        x, y = rel_series(trace, "x"), rel_series(trace, "y")
        anchor, ours = latencies(cumulative, x), latencies(cumulative, y)
        moved = f"motion {total} in"
        print(summary("QEMU input-linux (anchor)", anchor, f"{moved}, {x[-1][1] if x else 0} out"))
        print(
            summary(
                "handoff qmp backend",
                ours,
                f"{moved}, {y[-1][1] if y else 0} out  requests {transport.sent}  "
                f"cpu {cpu:.2f} s  SYN_DROPPED {router.dropped}",
            )
        )
        print(ratio("handoff / input-linux", ours, anchor))
        return
    keys_seen = sum(1 for _, kind, _ in trace if kind in ("key_qcode",))
    buttons_seen = sum(1 for _, kind, rest in trace if kind == "btn")
    x = rel_series(trace, "x")
    y = rel_series(trace, "y")
    moved_x = x[-1][1] if x else 0
    moved_y = y[-1][1] if y else 0
    rate = count / result["elapsed"]
    moved, written, seen = result["moved"], result["keys"], keys_seen + buttons_seen
    print(f"burst: driver {count} frames in {result['elapsed']:.1f} s ({rate:.0f} Hz)")
    print(f"burst: key+button events written {written}  seen {seen}  lost {written - seen}")
    print(f"burst: motion x in {moved} out {moved_x} (error {moved_x - moved}), "
          f"y in {-moved} out {moved_y} (error {moved_y + moved})")  # fmt: skip
    print(f"burst: SYN_DROPPED (kernel buffer overflows, events lost) {router.dropped}")
    share = 100 * cpu / wall
    print(f"burst: handoff cpu {cpu:.1f} s / {wall:.1f} s wall ({share:.0f}% of a core), "
          f"requests {transport.sent}, merged {backend.queue.merged}")  # fmt: skip


async def virtio(args: argparse.Namespace) -> None:
    """handoff's own cost on the virtio path: source event → copy in the proxy.

    QEMU reads the proxy the way input-linux reads a device, so the virtio
    path's latency is the anchor's plus this copy; measured with no QEMU
    holding the proxy so that a reader here sees the copies and their kernel
    timestamps.
    """
    from evdev import InputDevice

    from handoff.input.virtio import VirtioProxies

    proxies = VirtioProxies("bench")
    proxies.create()
    reader = InputDevice(proxies.nodes[1])
    driver = subprocess.Popen(  # noqa: ASYNC220 (a helper that lives for the whole run)
        [sys.executable, "-c", DRIVER, "latency", str(args.hz), str(args.frames)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert driver.stdin is not None
    assert driver.stdout is not None
    _, path_b, _ = json.loads(driver.stdout.readline())
    router = InputRouter(RouterCore({29, 97}, InputMode.GUEST), proxies)
    copies: list[tuple[float, int]] = []
    total = 0

    async def read_copies() -> None:
        nonlocal total
        while True:
            await trio.lowlevel.wait_readable(reader.fd)
            for event in reader.read():
                if event.type == EV_REL and event.code == REL_Y:
                    total += event.value
                    copies.append((event.sec + event.usec / 1e6, total))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(router.run_device, "b", InputDevice(path_b))
        nursery.start_soon(read_copies)
        await trio.sleep(1.0)
        cpu0 = time.process_time()
        driver.stdin.write("go\n")
        driver.stdin.flush()
        line = await trio.to_thread.run_sync(driver.stdout.readline)
        cpu = time.process_time() - cpu0
        router.close()
        nursery.cancel_scope.cancel()
    driver.stdin.write("done\n")
    driver.stdin.flush()
    driver.wait(30)
    reader.close()
    proxies.destroy()
    sent, running = [], 0
    for n, t in enumerate(json.loads(line)["sent"]):
        running += n % 50 + 1
        sent.append((t, running))
    copy = latencies(sent, copies)
    print(
        summary("handoff virtio copy", copy, f"motion {running} in, {total} out  cpu {cpu:.2f} s")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("host", "testbed", "burst", "virtio", "virtio-e2e"))
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--hz", type=float, default=None)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT, help="handoff's request depth")
    parser.add_argument("--burst", action="store_true", help="virtio-e2e: loss, not latency")
    args = parser.parse_args()
    if args.mode == "host":
        args.hz = args.hz or 1000.0
        trio.run(host, args)
    elif args.mode == "virtio":
        args.hz = args.hz or 1000.0
        trio.run(virtio, args)
    elif args.mode == "virtio-e2e":
        from virtio_e2e import run as virtio_e2e  # this script's directory

        args.hz = args.hz or (8000.0 if args.burst else 1000.0)
        trio.run(virtio_e2e, args, summary, ratio)
    else:
        args.hz = args.hz or (1000.0 if args.mode == "testbed" else 8000.0)
        trio.run(testbed, args, "latency" if args.mode == "testbed" else "burst")


if __name__ == "__main__":
    main()
