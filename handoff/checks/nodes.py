"""Device nodes a session opens: /dev/vfio/*, /dev/uinput, /dev/input/event*.

Who opens what: QEMU (as ``vm.user``, or as the user running handoff)
opens /dev/vfio/vfio and /dev/vfio/N; the supervisor opens the keyboards'
and mice's /dev/input/event* and, for the virtio input backend,
/dev/uinput. Running as root, handoff chowns /dev/vfio/N to ``vm.user`` for
the session (journaled, undone after); a person running handoff without root
needs the udev rule (contrib/udev/70-handoff.rules), which gives the
``handoff`` group those nodes: the seed's unsolved udev rule.
"""

from __future__ import annotations

from handoff.checks import Check, DoctorEnv, fail, ok, skip, warn
from handoff.checks.access import Identity, describe_node, node_access
from handoff.checks.kernel import ModuleState, module_state
from handoff.profile import InputBackend, Profile

UDEV_RULE_NAME = "70-handoff.rules"
HANDOFF_GROUP = "handoff"
_RULE_FIX = (
    "groupadd --system handoff; install -m 0644 contrib/udev/70-handoff.rules "
    "/etc/udev/rules.d/; udevadm control --reload; udevadm trigger --subsystem-match=vfio "
    "--subsystem-match=misc"
)


def check_udev_rule(env: DoctorEnv) -> Check:
    """Is handoff's udev rule installed in one of udev's rule directories?

    Root does not need it (handoff chowns /dev/vfio/N per session), so its
    absence is a warning only for a person running handoff unprivileged.
    """
    name = "udev-rule"
    for directory in env.udev_rule_dirs:
        path = directory / UDEV_RULE_NAME
        if path.is_file():
            return ok(name, f"{path} installed")
    where = ", ".join(str(d) for d in env.udev_rule_dirs[:3])
    if env.euid == 0:
        return ok(
            name,
            f"{UDEV_RULE_NAME} not in {where}: not needed as root (handoff chowns "
            "/dev/vfio/N for the session)",
        )
    return warn(name, f"{UDEV_RULE_NAME} is not in {where}", _RULE_FIX)


def check_vfio_nodes(env: DoctorEnv, qemu_user: Identity, groups: list[int]) -> Check:
    """/dev/vfio/vfio and the profile's /dev/vfio/N, for the user QEMU runs as."""
    name = "vfio-nodes"
    vfio_dir = env.host.dev / "vfio"
    container = vfio_dir / "vfio"
    if not container.exists():
        if module_state(env, "vfio") is ModuleState.MISSING:
            return fail(name, f"{container} does not exist and vfio is missing", "see module:vfio")
        return ok(name, f"{container} appears when handoff loads vfio-pci")
    problems: list[str] = []
    if not node_access(container, qemu_user, write=True):
        problems.append(f"{describe_node(container)} is not read/write for {qemu_user.name}")
    present: list[str] = []
    for group in groups:
        node = vfio_dir / str(group)
        if not node.exists():
            continue
        present.append(describe_node(node))
        if not node_access(node, qemu_user, write=True) and env.euid != 0:
            problems.append(f"{describe_node(node)} is not read/write for {qemu_user.name}")
    if problems:
        return fail(
            name, "; ".join(problems), _RULE_FIX + f"; usermod -aG handoff {qemu_user.name}"
        )
    detail = f"{describe_node(container)} usable by {qemu_user.name}"
    if present:
        detail += "; " + ", ".join(present)
    if env.euid == 0 and groups and not qemu_user.is_root:
        detail += f"; handoff (root) gives /dev/vfio/N to {qemu_user.name} for the session"
    return ok(name, detail)


def check_uinput(env: DoctorEnv, supervisor: Identity, profile: Profile) -> Check:
    """/dev/uinput, for the virtio input backend's proxy devices."""
    name = "uinput"
    if profile.input.backend is not InputBackend.VIRTIO:
        return skip(name, f'input.backend = "{profile.input.backend.value}" needs no uinput')
    node = env.host.dev / "uinput"
    if not node.exists():
        if module_state(env, "uinput") is ModuleState.MISSING:
            return fail(
                name,
                f"{node} does not exist and the uinput module is missing",
                'build the kernel with CONFIG_INPUT_UINPUT, or use input.backend = "qmp"',
            )
        return fail(
            name,
            f"{node} does not exist (uinput is not loaded)",
            "modprobe uinput; echo uinput > /etc/modules-load.d/handoff.conf",
        )
    if not node_access(node, supervisor, write=True):
        return fail(
            name,
            f"{describe_node(node)} is not read/write for {supervisor.name}",
            _RULE_FIX + f"; usermod -aG handoff {supervisor.name}",
        )
    return ok(name, f"{describe_node(node)} usable by {supervisor.name}")


def check_input_devices(env: DoctorEnv, supervisor: Identity, profile: Profile) -> Check:
    """The keyboards' and mice's evdev nodes, which the supervisor grabs."""
    name = "input-devices"
    if profile.input.backend is InputBackend.NONE:
        return skip(name, 'input.backend = "none": no keyboard or mouse is handed off')
    input_dir = env.host.dev / "input"
    events = sorted(input_dir.glob("event*")) if input_dir.is_dir() else []
    if not events:
        return fail(
            name,
            f"no {input_dir}/event* nodes: no keyboard or mouse to hand off",
            "modprobe evdev, and plug in a keyboard and a mouse",
        )
    unreadable = [e for e in events if not node_access(e, supervisor, write=False)]
    if unreadable:
        return fail(
            name,
            f"{len(unreadable)} of {len(events)} event nodes are not readable by "
            f"{supervisor.name} (e.g. {describe_node(unreadable[0])})",
            f"run handoff as root, or usermod -aG input {supervisor.name} (members of 'input' "
            "can read every keystroke)",
        )
    return ok(name, f"{len(events)} event nodes in {input_dir} readable by {supervisor.name}")
