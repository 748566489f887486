"""How host changes plug into a session.

The supervisor knows nothing about GPUs or keyboards. A capability that
changes the host (GPU hand-off, input hand-off, memlock) is a
:class:`HostResource`; the session acquires resources in order before QEMU
starts and releases them in reverse order after the QEMU process has exited,
on every exit path, inside a shielded cancel scope with its own deadline.
So a new capability adds a resource and never edits the shutdown logic.

A resource adds nothing to QEMU's command line: every argument QEMU gets
(vfio-pci devices, the input monitor, the virtio proxies' paths) is in the
session plan (:mod:`handoff.session.plan`), which ``handoff argv`` prints.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # start-up: building a session's resources needs no trio
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
    2. ``memlock_bytes`` after acquire: the RLIMIT_MEMLOCK QEMU needs for
       this resource (None: no opinion); the session gives QEMU the largest.
    3. ``note_qemu_pid(pid)`` as soon as QEMU exists.
    4. ``vm_started(vm, nursery, control)`` once QMP is connected: start
       background tasks (input forwarding) in ``nursery``, register control
       commands. Tasks are cancelled when the VM ends.
    5. ``release()`` after the QEMU process has exited, however the session
       ended; called only if acquire() returned. Must be idempotent and must
       not raise for a change already undone.
    6. ``status()`` at any time for ``handoff status``.
    """

    @property
    def name(self) -> str: ...

    async def acquire(self) -> None: ...

    @property
    def memlock_bytes(self) -> int | None: ...

    def note_qemu_pid(self, pid: int) -> None:
        """Told the QEMU pid as soon as it exists (the GPU journal records it)."""
        ...

    async def vm_started(
        self, vm: VmHandle, nursery: trio.Nursery, control: ControlRegistry
    ) -> None: ...

    async def release(self) -> None: ...

    def status(self) -> JsonObject: ...
