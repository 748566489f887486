"""The layering of handoff/, checked on every run: pure cores stay pure.

Every module of the package is in exactly one layer (a new module fails this
test until it is placed). A module may import its own layer and the layers
below it, never one above; pure cores additionally import nothing that does
I/O or drives the event loop (trio, evdev, pyudev, qemu.qmp, asyncio,
subprocess, sockets, ...). The table is the code map of ARCHITECTURE.md in
executable form: change them together.
"""

from __future__ import annotations

import ast
import enum
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "handoff"


class Layer(enum.IntEnum):
    """Lower layers never import higher ones."""

    FOUNDATION = 0  # errors, the host's roots, names of the run root
    CORE = 1  # pure decisions over frozen values
    EDGE = 2  # reads or changes the host, QEMU, devices
    SESSION = 3  # orchestration: the supervisor, its resources and the ladder
    COMMAND = 4  # the command line: parsing, printing, exit codes


#: module (dotted, or a package prefix ending in ".") -> layer. The longest match wins.
LAYERS: dict[str, Layer] = {
    "handoff": Layer.FOUNDATION,
    "handoff.errors": Layer.FOUNDATION,
    "handoff.host": Layer.FOUNDATION,
    "handoff.run_layout": Layer.FOUNDATION,
    "handoff.control_protocol": Layer.FOUNDATION,
    "handoff.control_access": Layer.CORE,
    # pure cores
    "handoff.profile.": Layer.CORE,
    "handoff.session_plan": Layer.CORE,
    "handoff.session_end": Layer.CORE,
    "handoff.qemu.cmdline": Layer.CORE,
    "handoff.pci.address": Layer.CORE,
    "handoff.pci.model": Layer.CORE,
    "handoff.pci.plan": Layer.CORE,
    "handoff.input.codes": Layer.CORE,
    "handoff.input.keynames": Layer.CORE,
    "handoff.input.keymap": Layer.CORE,
    "handoff.input.translate": Layer.CORE,
    "handoff.input.router": Layer.CORE,
    "handoff.tune.": Layer.CORE,
    "handoff.tune.topology": Layer.EDGE,
    "handoff.tune.resource": Layer.EDGE,
    "handoff.tune.settings": Layer.EDGE,
    "handoff.live.": Layer.CORE,
    "handoff.live.guest": Layer.EDGE,
    "handoff.live.resource": Layer.EDGE,
    "handoff.init.": Layer.CORE,
    "handoff.display.": Layer.CORE,
    "handoff.display.journal": Layer.EDGE,
    "handoff.display.resource": Layer.EDGE,
    "handoff.display.sysfs": Layer.EDGE,
    "handoff.display.units": Layer.EDGE,
    "handoff.init.gather": Layer.EDGE,
    "handoff.hooks.": Layer.CORE,
    "handoff.monitor.": Layer.CORE,
    "handoff.hooks.runner": Layer.EDGE,
    # edges
    "handoff.pci.": Layer.EDGE,
    "handoff.input.": Layer.EDGE,
    "handoff.qemu.": Layer.EDGE,
    "handoff.checks.": Layer.EDGE,
    "handoff.rundir": Layer.EDGE,
    "handoff.control": Layer.EDGE,
    "handoff.control_client": Layer.EDGE,
    "handoff.control_users": Layer.EDGE,
    "handoff.control_find": Layer.EDGE,
    "handoff.memlock": Layer.EDGE,
    "handoff.firmware": Layer.EDGE,
    "handoff.host_facts": Layer.EDGE,
    "handoff.profile_lookup": Layer.EDGE,
    "handoff.resources": Layer.EDGE,
    # orchestration
    "handoff.ladder": Layer.SESSION,
    "handoff.session": Layer.SESSION,
    "handoff.doctor": Layer.COMMAND,
    # commands
    "handoff.cli": Layer.COMMAND,
    "handoff.cli_gpu": Layer.COMMAND,
    "handoff.cli_init": Layer.COMMAND,
    "handoff.cli_live": Layer.COMMAND,
    "handoff.__main__": Layer.COMMAND,
}

#: What a pure core may never import: the event loop, devices, processes, sockets.
IMPURE = frozenset(
    {
        "trio", "evdev", "pyudev", "qemu", "asyncio", "subprocess", "socket", "fcntl",
        "select", "selectors", "termios", "threading", "ctypes", "shutil", "tempfile",
        "resource", "pwd", "grp",
    }
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> Layer | None:
    best: tuple[int, Layer] | None = None
    for key, layer in LAYERS.items():
        hit = module == key.rstrip(".") if not key.endswith(".") else (
            module.startswith(key) or module == key[:-1]
        )
        if hit and (best is None or len(key) > best[0]):
            best = (len(key), layer)
    return best[1] if best else None


def imports_of(path: Path) -> set[str]:
    """Absolute module names a file imports, at any depth (lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def handoff_target(name: str) -> str | None:
    """The handoff module an import names (``from handoff.pci import sysfs``: handoff.pci.sysfs)."""
    if name != "handoff" and not name.startswith("handoff."):
        return None
    candidate = PACKAGE.parent / Path(*name.split("."))
    if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
        return name
    return None


def test_every_module_has_a_layer() -> None:
    missing = [module_name(p) for p in MODULES if layer_of(module_name(p)) is None]
    assert not missing, f"place these modules in LAYERS (and ARCHITECTURE.md): {missing}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_a_module_imports_only_its_own_layer_and_below(path: Path) -> None:
    me = module_name(path)
    mine = layer_of(me)
    assert mine is not None
    upward = []
    for name in imports_of(path):
        target = handoff_target(name)
        if target is None or target == me:
            continue
        theirs = layer_of(target)
        if theirs is not None and theirs > mine:
            upward.append(f"{target} ({theirs.name})")
    assert not upward, f"{me} ({mine.name}) imports upward: {sorted(upward)}"


@pytest.mark.parametrize(
    "path", [p for p in MODULES if layer_of(module_name(p)) is Layer.CORE],
    ids=lambda p: module_name(p),
)
def test_a_pure_core_imports_no_io_and_no_event_loop(path: Path) -> None:
    bad = sorted(n for n in imports_of(path) if n.split(".")[0] in IMPURE)
    edges = sorted(
        t for n in imports_of(path)
        if (t := handoff_target(n)) is not None and layer_of(t) is Layer.EDGE
    )
    assert not bad, f"{module_name(path)} is a pure core but imports {bad}"
    assert not edges, f"{module_name(path)} is a pure core but imports edge modules {edges}"
