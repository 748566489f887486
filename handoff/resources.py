"""How host changes plug into a session.

The supervisor knows nothing about GPUs or keyboards. A capability that
changes the host (GPU hand-off, input hand-off, memlock) is a
:class:`HostResource`; the session acquires resources in order before QEMU
starts and releases them in reverse order after the QEMU process has exited,
on every exit path, inside a shielded cancel scope with its own deadline.
So a new capability adds a resource and never edits the shutdown logic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import trio

JsonObject = dict[str, Any]
ControlHandler = Callable[[Mapping[str, Any]], Awaitable[JsonObject]]


class VmHandle(Protocol):
    """What a resource may use of the running VM once QMP is connected."""

    @property
    def pid(self) -> int: ...

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> object:
        """Run one QMP command and return its ``return`` value."""
        ...


class ControlRegistry(Protocol):
    """The control socket's command table (``handoff switch`` → the input resource)."""

    def register(self, command: str, handler: ControlHandler) -> None: ...


class HostResource(Protocol):
    """One reversible host change owned by a session.

    Lifecycle, driven by the session:

    1. ``acquire()`` before QEMU starts. Journals before it changes anything;
       if it fails it must leave the host as it found it and raise a
       HandoffError.
    2. ``qemu_args()`` after acquire: extra QEMU arguments (vfio-pci devices,
       virtio-input-host-pci proxies). Pure.
    3. ``vm_started(vm, nursery, control)`` once QMP is connected: start
       background tasks (input forwarding) in ``nursery``, register control
       commands. Tasks are cancelled when the VM ends.
    4. ``release()`` after the QEMU process has exited, however the session
       ended; called only if acquire() returned. Must be idempotent and must
       not raise for a change already undone.
    5. ``status()`` at any time for ``handoff status``.
    """

    @property
    def name(self) -> str: ...

    async def acquire(self) -> None: ...

    def qemu_args(self) -> Sequence[str]: ...

    def note_qemu_pid(self, pid: int) -> None:
        """Told the QEMU pid as soon as it exists (the GPU journal records it)."""
        ...

    async def vm_started(
        self, vm: VmHandle, nursery: trio.Nursery, control: ControlRegistry
    ) -> None: ...

    async def release(self) -> None: ...

    def status(self) -> JsonObject: ...
