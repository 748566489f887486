"""Names and paths under the run root (pure: no I/O, imported by light commands too).

``<run>/<name>/`` is a session's 0700 run directory (lock, control socket,
QEMU's log, the GPU journal); ``<run>/qemu/<name>/`` is QEMU's own 0700
socket directory, owned by the user QEMU runs as (VNC, the input monitor,
the virtio proxies' links). :mod:`handoff.session.rundir` creates and removes them,
:mod:`handoff.session.plan` names them in the argv.
"""

from __future__ import annotations

from pathlib import Path

from handoff.base.host import HostPaths

LOCK_FILE = "lock"
CONTROL_SOCKET = "control.sock"
QEMU_LOG = "qemu.log"
QEMU_DIR = "qemu"
JOURNAL_DIR = "journal"
VNC_SOCKET = "vnc.sock"
INPUT_MONITOR = "input.qmp"
#: ``<run>/control/<name>/``: the sockets desktop users reach a root session by.
USER_CONTROL_DIR = "control"
GROUP_SOCKET = "group.sock"
#: The links QEMU opens for the virtio backend's proxies, in its socket directory.
KEYBOARD_LINK = "keyboard.evdev"
MOUSE_LINK = "mouse.evdev"


def qemu_socket_dir(paths: HostPaths, profile_name: str) -> Path:
    """Where QEMU creates its own listening sockets (VNC, extra monitors).

    ``<run>/qemu/<name>``: a 0700 directory owned by the user QEMU runs as,
    beside the session's run directory; created by ``RunDir.acquire``,
    removed with its contents on release.
    """
    return paths.run / QEMU_DIR / profile_name


def input_monitor_path(paths: HostPaths, profile_name: str) -> Path:
    """The input monitor's socket (backend ``qmp``): QEMU creates it in its socket dir."""
    return qemu_socket_dir(paths, profile_name) / INPUT_MONITOR


def proxy_links(paths: HostPaths, profile_name: str) -> tuple[Path, Path]:
    """(keyboard, mouse): the stable paths QEMU opens for the virtio proxies."""
    directory = qemu_socket_dir(paths, profile_name)
    return directory / KEYBOARD_LINK, directory / MOUSE_LINK
#: swtpm's control socket (``[tpm] type = "emulated"``), in QEMU's socket directory.
TPM_SOCKET = "tpm.sock"
#: The guest agent's channel (``[guest_agent]``), in QEMU's socket directory.
AGENT_SOCKET = "agent.sock"


def tpm_socket_path(paths: HostPaths, profile_name: str) -> Path:
    """swtpm's control socket: swtpm creates it, QEMU connects to it."""
    return qemu_socket_dir(paths, profile_name) / TPM_SOCKET


def agent_socket_path(paths: HostPaths, profile_name: str) -> Path:
    """The guest agent's socket: QEMU listens, handoff connects when it asks the agent."""
    return qemu_socket_dir(paths, profile_name) / AGENT_SOCKET


def user_control_dir(run: Path, profile_name: str) -> Path:
    """``<run>/control/<name>``: root's 0755 directory of a session's user sockets."""
    return run / USER_CONTROL_DIR / profile_name


def user_socket(run: Path, profile_name: str, uid: int | None) -> Path:
    """The socket of one allowed uid (mode 0600, owned by it), or the group's (None: 0660)."""
    name = GROUP_SOCKET if uid is None else f"uid-{uid}.sock"
    return user_control_dir(run, profile_name) / name
