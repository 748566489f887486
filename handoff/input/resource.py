"""The input hand-off as a session resource (see handoff/session/resources.py).

``InputHandoff(profile, paths)`` owns, for one session: the virtio proxies
(backend ``virtio``) or a QMP monitor reserved for input (backend ``qmp``),
the device watcher, the router and its forwarding, and the control command
``switch``. Lifecycle:

* ``acquire``: create the virtio proxies, their event nodes owned by
  ``vm.user`` when QEMU runs as that user, and point the plan's links
  ``<run root>/qemu/<name>/keyboard.evdev`` and ``mouse.evdev`` at them
  (nothing else changes the host). QEMU's arguments (the proxies as
  virtio-input-host-pci devices on those links, or the input monitor
  ``-chardev socket,id=handoff-input,path=<run root>/qemu/<name>/input.qmp,...``
  that QEMU creates in its own socket directory) are in the session plan
  (:mod:`handoff.session.plan`). A monitor of its own lets input pipeline up
  to 8 requests in strict order without sharing the session's QMP queue.
* ``vm_started``: narrow the key table to the running QEMU's QKeyCode enum,
  connect the transport, start discovery (hotplug included) and routing in
  the session's nursery, register ``switch``.
* ``release``: the guest lets go of its keys, every grab is released, the
  proxies are destroyed. Idempotent; runs on every exit path.

Control command ``switch``: request ``{"command": "switch", "mode":
"host"|"guest"|"toggle"}``, result ``{"mode": "host"|"guest", "pending":
"host"|"guest"|null}`` (a switch to the guest waits until no key is held).

``input.gpu_hotkey``: the router answers the chord with
:class:`~handoff.input.router.GpuToggle`; the resource starts
``on_gpu_hotkey`` (the session sets it to the live GPU's toggle, the path of
``handoff gpu NAME toggle``) in a task of its own, so reading the keyboards
never waits for the hand-off; a refusal is logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from handoff.base.errors import HandoffError, InputError
from handoff.base.host import HostPaths, qemu_account
from handoff.base.run_layout import input_monitor_path, proxy_links
from handoff.control.protocol import Command, Field, Side, requested_side
from handoff.input.devices import DeviceInfo, DeviceWatcher, Selection, classify_by_capabilities
from handoff.input.edge import GuestSink, InputRouter
from handoff.input.forward import QmpBackend, QmpSocketTransport
from handoff.input.host_key_check import check_host_keys
from handoff.input.host_keys import HostKeysDevice, selected_key_sources
from handoff.input.keymap import (
    LINUX_TO_QCODE,
    hotkey_codes,
    qkeycodes_from_schema,
    restrict_to,
    unsupported,
)
from handoff.input.router import EscapeChord, RouterCore
from handoff.input.virtio import VirtioProxies
from handoff.profile import InputBackend, InputMode, Profile
from handoff.session.changes import ProxyPlan
from handoff.session.plan import input_argv
from handoff.session.resources import ControlRegistry, JsonObject, VmHandle

log = logging.getLogger(__name__)


class InputHandoff:
    """HostResource for keyboards and mice (backends ``qmp`` and ``virtio``)."""

    name = "input"

    def __init__(
        self, profile: Profile, paths: HostPaths, *, proxies: ProxyPlan | None = None
    ) -> None:
        self._profile = profile
        # The session plan's virtio proxies (links, node owner); None: decided here.
        self.planned_proxies = proxies
        self._input = profile.input
        self._paths = paths
        # Validate now, so a bad hotkey or selector fails before anything changes.
        self._hotkey = hotkey_codes(self._input.hotkey)
        gpu = self._input.gpu_hotkey
        self._gpu_hotkey = hotkey_codes(gpu) if gpu else frozenset[int]()
        self._host_keys = hotkey_codes(self._input.host_keys) if self._input.host_keys else None
        self._host_device: HostKeysDevice | None = None
        #: What the gpu chord starts (the session: the live GPU's toggle).
        self.on_gpu_hotkey: Callable[[], Awaitable[object]] | None = None
        #: Told every change of side (the session: the [[hook]] runner's queue; must not block).
        self.on_mode: Callable[[InputMode], None] | None = None
        Selection.from_profile(self._input.devices, self._input.exclude)
        self._proxies: VirtioProxies | None = None
        self._router: InputRouter | None = None
        self._transport: QmpSocketTransport | None = None
        self._identities: dict[str, str] = {}  # identity → node
        self._released = False

    @property
    def backend(self) -> InputBackend:
        return self._input.backend

    @property
    def monitor_path(self) -> Path:
        return input_monitor_path(self._paths, self._profile.name)

    @property
    def memlock_bytes(self) -> int | None:
        """Input pins no guest memory."""
        return None

    async def acquire(self) -> None:
        if self._host_keys and self.backend is not InputBackend.NONE:
            # Before anything changes: a host key no grabbed device has is refused.
            selection = Selection.from_profile(self._input.devices, self._input.exclude)
            check_host_keys(self._input.host_keys, selected_key_sources(selection, _classify))
            host_device = HostKeysDevice(self._host_keys)
            host_device.create()
            self._host_device = host_device
        if self.backend is InputBackend.VIRTIO:
            planned = self.planned_proxies
            owner_uid = planned.owner_uid if planned is not None else _qemu_uid(self._profile)
            proxies = VirtioProxies(self._profile.name, owner_uid=owner_uid)
            try:
                proxies.create()
            except BaseException:
                self._destroy_host_device()
                raise
            keyboard, mouse = (
                planned.links if planned is not None
                else proxy_links(self._paths, self._profile.name)
            )
            try:
                proxies.link(keyboard, mouse)
            except OSError as exc:
                proxies.destroy()
                self._destroy_host_device()
                raise InputError(
                    f"cannot link {keyboard.parent} to the virtio input proxies: {exc}",
                    fix=f"check that handoff can write {keyboard.parent} (HANDOFF_RUN_DIR)",
                ) from exc
            self._proxies = proxies

    def qemu_args(self) -> tuple[str, ...]:
        """The input part of the session plan's argv (for tests that start QEMU themselves:
        the session itself starts the plan's argv, it never asks a resource)."""
        return input_argv(self._profile, self._paths)

    def note_qemu_pid(self, pid: int) -> None:
        """Input keeps no per-pid state."""

    async def vm_started(
        self, vm: VmHandle, nursery: trio.Nursery, control: ControlRegistry
    ) -> None:
        if self.backend is InputBackend.NONE:
            return
        sink: GuestSink
        if self.backend is InputBackend.VIRTIO:
            assert self._proxies is not None
            sink = self._proxies
            proxy_nodes: tuple[str, ...] = self._proxies.nodes
        else:
            backend = QmpBackend(await self._keymap(vm))
            self._transport = await QmpSocketTransport.connect(self.monitor_path)
            nursery.start_soon(backend.run, self._transport)
            sink = backend
            proxy_nodes = ()
        self._router = self.make_router(sink, nursery)
        if self._host_device is not None and self._host_device.node is not None:
            proxy_nodes += (self._host_device.node,)  # never grab our own device
        selection = Selection.from_profile(self._input.devices, self._input.exclude, proxy_nodes)
        watcher = DeviceWatcher(selection, self._on_device, classify=_classify)
        nursery.start_soon(self._watch, watcher)
        control.register(Command.SWITCH, self._switch)

    def make_router(self, sink: GuestSink, nursery: trio.Nursery) -> InputRouter:
        """The router for this profile's chords; the gpu chord's toggle and the escape
        chord's deadline run in ``nursery``."""
        core = RouterCore(
            self._hotkey, self._input.start_in, gpu_hotkey=self._gpu_hotkey,
            host_keys=self._host_keys or (),
        )
        escape = self._input.escape_hotkey
        router = InputRouter(
            core, sink, escape=EscapeChord(hotkey_codes(escape)) if escape else None,
            on_mode=self._mode_changed,
            on_gpu=lambda: nursery.start_soon(self._toggle_gpu),
            to_host=self._host_device.write if self._host_device is not None else None,
        )
        if escape:
            nursery.start_soon(router.run_escape)  # the chord's deadline
        return router

    def _mode_changed(self, mode: InputMode) -> None:
        if self.on_mode is not None:
            self.on_mode(mode)

    async def _keymap(self, vm: VmHandle) -> Mapping[int, str]:
        try:
            schema = await vm.execute("query-qmp-schema")
        except HandoffError as exc:
            log.warning("could not read QEMU's QKeyCode enum (%s); using the full table", exc)
            return LINUX_TO_QCODE
        if not isinstance(schema, list):
            return LINUX_TO_QCODE
        qcodes = qkeycodes_from_schema(schema)
        missing = unsupported(LINUX_TO_QCODE, qcodes)
        if missing:
            log.info(
                "this QEMU has no qcode for %d Linux keys (%s)", len(missing), ", ".join(missing)
            )
        return restrict_to(LINUX_TO_QCODE, qcodes)

    async def _watch(self, watcher: DeviceWatcher) -> None:
        try:
            await watcher.run()
        finally:
            if self._router is not None:
                self._router.close()

    async def _on_device(self, info: DeviceInfo) -> None:
        from evdev import InputDevice

        assert self._router is not None
        identity = info.identity
        other = self._identities.get(identity)
        if other is not None and other != info.node and _node_exists(other):
            identity = f"{identity}#{info.node.rsplit('event', 1)[-1]}"  # an identical twin
        try:
            handle = InputDevice(info.node)
        except OSError as exc:
            log.warning("cannot open input device %s (%s): %s", info.name, info.node, exc.strerror)
            return
        self._identities[identity] = info.node
        log.info("input device %s (%s) found", info.name, identity)
        try:
            await self._router.run_device(identity, handle)
        finally:
            if self._identities.get(identity) == info.node:
                del self._identities[identity]

    async def _switch(self, message: Mapping[str, Any]) -> JsonObject:
        target = requested_side(message, Command.SWITCH)
        if self._router is None:
            raise InputError(
                "switch: input hand-off is not running (the profile's input.backend is "
                f"{self.backend.value!r} or the VM has not started)",
                fix='set input.backend = "qmp" or "virtio" in the profile',
            )
        self._router.request(target)
        return self._mode()

    async def _toggle_gpu(self) -> None:
        """The gpu chord: the live GPU's toggle, in its own task; a refusal is logged."""
        if self.on_gpu_hotkey is None:
            log.warning("gpu hotkey: this session has no live GPU group to move")
            return
        try:
            await self.on_gpu_hotkey()
        except HandoffError as exc:
            log.warning("gpu hotkey: %s%s", exc.message, f" (fix: {exc.fix})" if exc.fix else "")

    async def follow_gpu(self, gpu_in_guest: bool) -> None:
        """``input.follow_gpu``: keyboard and mouse go where the live GPU (the screen) went,
        through the router as any switch (no key stays held on either side)."""
        if self._router is not None and self._input.follow_gpu:
            self._router.request(Side.GUEST if gpu_in_guest else Side.HOST)

    def _mode(self) -> JsonObject:
        if self._router is None:
            return {Field.MODE: Side.HOST.value, Field.PENDING: None}
        core = self._router.core
        return {
            Field.MODE: core.mode.value,
            Field.PENDING: core.pending.value if core.pending else None,
        }

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        with trio.CancelScope(shield=True):
            if self._router is not None:
                self._router.close()
                for handle in list(self._router.devices.values()):
                    with contextlib.suppress(OSError):
                        handle.close()
            if self._transport is not None:
                with contextlib.suppress(OSError, trio.ClosedResourceError):
                    await self._transport.aclose()
            if self._proxies is not None:
                self._proxies.destroy()
            self._destroy_host_device()

    def _destroy_host_device(self) -> None:
        if self._host_device is not None:
            self._host_device.destroy()
            self._host_device = None

    def status(self) -> JsonObject:
        devices: list[JsonObject] = []
        if self._router is not None:
            grabbed = self._router.core.grabbed
            devices = [
                {"identity": ident, "name": handle.name, "grabbed": ident in grabbed}
                for ident, handle in sorted(self._router.devices.items())
            ]
        host_keys: JsonObject = (
            {"host_keys_device": self._host_device.node} if self._host_device is not None else {}
        )
        return {"backend": self.backend.value, **self._mode(), **host_keys, "devices": devices}


def _qemu_uid(profile: Profile) -> int | None:
    """QEMU's uid when it differs from the supervisor's (``vm.user``), else None."""
    if profile.vm.user is None:
        return None
    uid = qemu_account(profile.vm.user).pw_uid
    return None if uid == os.geteuid() else uid


def _node_exists(node: str) -> bool:
    """A device node still there means a twin, not a re-plug (nodes vanish on unplug)."""
    return os.path.exists(node)


def _classify(info: DeviceInfo) -> DeviceInfo:
    """Without udevd: keyboard/mouse from the device's own capability bits."""
    from evdev import InputDevice

    try:
        device = InputDevice(info.node)
    except OSError:
        return dataclasses.replace(info, keyboard=False, mouse=False)
    try:
        keyboard, mouse = classify_by_capabilities(device.capabilities())
    finally:
        device.close()
    return dataclasses.replace(info, keyboard=keyboard, mouse=mouse)
