"""The layering of handoff/, checked on every run: pure cores stay pure.

Every module of the package is placed, by its full name, in exactly one
layer (a new module fails this test until it is placed: no folder decides
for it). A module may import its own layer and the layers below it, never
one above; relative imports count like absolute ones, and so does an import
inside a function. A pure core additionally imports nothing that does I/O,
reads a clock or drives the event loop (os, time, io, subprocess, socket,
trio, evdev, ...), apart from the few commented entries of
``CORE_STDLIB_ALLOWED``. Nothing in handoff/ imports by name at run time
(importlib, ``__import__``): every import is visible here. The capability
packages form no loop (``handoff.journal`` imports none of them: they
register with it). The table is the code map of ARCHITECTURE.md in
executable form: change them together.

The checker is a pure function of a module's name and source
(:func:`violations`), so ``test_the_checker_catches_*`` feed it synthetic
files that must fail.
"""

from __future__ import annotations

import ast
import enum
from collections.abc import Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "handoff"


class Layer(enum.IntEnum):
    """Lower layers never import higher ones."""

    FOUNDATION = 0  # errors, the host's roots, names of the run root
    CORE = 1  # pure decisions over frozen values
    EDGE = 2  # reads or changes the host, QEMU, devices
    SESSION = 3  # orchestration: the supervisor, its resources, recovery, the ladder
    COMMAND = 4  # the command line: parsing, printing, exit codes


F, C, E, S, K = Layer.FOUNDATION, Layer.CORE, Layer.EDGE, Layer.SESSION, Layer.COMMAND

#: Every module of handoff/ -> its layer. No prefixes: a new module is placed by hand.
LAYERS: dict[str, Layer] = {
    # issue 22: desktop-user control, hooks, host keys, the monitor
    "handoff.control.access": C,
    "handoff.control.users": E,
    "handoff.control.accounts": E,
    "handoff.control.find": E,
    "handoff.profile.control": C,
    "handoff.profile.hooks": C,
    "handoff.profile.host_keys": C,
    "handoff.input.host_key_check": C,
    "handoff.profile.monitor": C,
    "handoff.hooks": C,
    "handoff.hooks.plan": C,
    "handoff.hooks.runner": E,
    "handoff.monitor": C,
    "handoff.monitor.mccs": C,
    "handoff.monitor.plan": C,
    "handoff.checks.monitor": E,
    "handoff.input.host_keys": E,
    # foundation
    "handoff": F,
    # Package files of the relayout are empty (a docstring): each sits at the lowest
    # layer of what it holds, so importing a core from it is never "upward".
    "handoff.base": F,
    "handoff.control": F,
    "handoff.session": C,
    "handoff.cli": E,
    "handoff.base.errors": F,
    "handoff.base.host": F,
    "handoff.base.run_layout": F,
    "handoff.control.protocol": F,
    # pure cores
    "handoff.profile": C,
    "handoff.profile.model": C,
    "handoff.profile.parse": C,
    "handoff.profile.render": C,
    "handoff.profile.reader": C,
    "handoff.profile.input_section": C,
    "handoff.profile.tune_section": C,
    "handoff.profile.tpm": C,
    "handoff.profile.guest_agent": C,
    "handoff.profile.looking_glass": C,
    "handoff.profile.usb": C,
    "handoff.profile.share": C,
    "handoff.profile.sound": C,
    "handoff.desk": C,
    "handoff.desk.looking_glass": C,
    "handoff.desk.usb": C,
    "handoff.desk.share": C,
    "handoff.desk.sound": C,
    "handoff.profile.reset": C,
    "handoff.session.plan": C,
    "handoff.session.changes": C,
    "handoff.session.end": C,
    "handoff.qemu.cmdline": C,
    "handoff.qemu.agent_protocol": C,
    "handoff.tpm": C,
    "handoff.tpm.plan": C,
    "handoff.profile.guest": C,
    "handoff.qemu.firmware_descriptors": C,
    "handoff.qemu.hyperv": C,
    "handoff.pci.address": C,
    "handoff.pci.model": C,
    "handoff.pci.plan": C,
    "handoff.pci.drift": C,
    "handoff.pci.rules": C,
    "handoff.pci.reset": C,
    "handoff.pci.vendor_reset": C,
    "handoff.input.codes": C,
    "handoff.input.keynames": C,
    "handoff.input.keymap": C,
    "handoff.input.translate": C,
    "handoff.input.router": C,
    "handoff.tune": C,
    "handoff.tune.cpulist": C,
    "handoff.tune.governor": C,
    "handoff.tune.hugepages": C,
    "handoff.tune.isolation": C,
    "handoff.tune.model": C,
    "handoff.tune.pinning": C,
    "handoff.tune.plan": C,
    "handoff.live": C,
    "handoff.live.sequence": C,
    "handoff.live.state": C,
    "handoff.live.windows": C,
    "handoff.init": C,
    "handoff.init.choose": C,
    "handoff.init.facts": C,
    "handoff.init.pciids": C,
    "handoff.init.render": C,
    "handoff.init.guest_os": C,
    "handoff.interop": C,
    "handoff.interop.draft": C,
    "handoff.interop.domain_reader": C,
    "handoff.interop.domain_import": C,
    "handoff.interop.domain_devices": C,
    "handoff.interop.reasons": C,
    "handoff.interop.domain_export": C,
    "handoff.interop.settings": C,
    "handoff.interop.kubevirt": C,
    "handoff.display": C,
    "handoff.display.model": C,
    "handoff.display.plan": C,
    "handoff.display.where": C,
    # edges: the journal every capability registers with
    "handoff.journal": E,
    "handoff.journal.liveness": E,
    "handoff.journal.locks": E,
    "handoff.journal.record": E,
    "handoff.journal.recover": E,
    "handoff.journal.store": E,
    # edges: the GPU hand-off
    "handoff.pci": E,
    "handoff.pci.commands": E,
    "handoff.pci.engine": E,
    "handoff.pci.holders": E,
    "handoff.pci.ops": E,
    "handoff.pci.recovery": E,
    "handoff.pci.reset_report": E,
    "handoff.pci.reset_sysfs": E,
    "handoff.pci.resource": E,
    "handoff.pci.revive": E,
    "handoff.pci.snapshot": E,
    "handoff.pci.sysfs": E,
    # edges: tuning, live groups, the host display
    "handoff.tune.recovery": E,
    "handoff.tune.resource": E,
    "handoff.tune.settings": E,
    "handoff.tune.topology": E,
    "handoff.live.guest": E,
    "handoff.live.recovery": E,
    "handoff.live.resource": E,
    "handoff.display.journal": E,
    "handoff.display.recovery": E,
    "handoff.display.resource": E,
    "handoff.display.sysfs": E,
    "handoff.display.units": E,
    "handoff.init.gather": E,
    "handoff.desk.journal": E,
    "handoff.desk.recovery": E,
    "handoff.desk.shm": E,
    "handoff.desk.usb_host": E,
    "handoff.desk.virtiofsd": E,
    "handoff.desk.sound_host": E,
    "handoff.desk.sound_access": E,
    "handoff.checks.looking_glass": E,
    "handoff.checks.sound": E,
    # edges: input, QEMU, doctor's checks, the rest
    "handoff.input": E,
    "handoff.input.devices": E,
    "handoff.input.edge": E,
    "handoff.input.forward": E,
    "handoff.input.resource": E,
    "handoff.input.virtio": E,
    "handoff.qemu": E,
    "handoff.qemu.accel": E,
    "handoff.qemu.capabilities": E,
    "handoff.qemu.probe_cache": E,
    "handoff.qemu.firmware_search": E,
    "handoff.qemu.process": E,
    "handoff.qemu.spawn": E,
    "handoff.qemu.qmp": E,
    "handoff.qemu.wire": E,
    "handoff.qemu.agent": E,
    "handoff.tpm.resource": E,
    "handoff.checks": E,
    "handoff.checks.access": E,
    "handoff.checks.cpu": E,
    "handoff.checks.devices": E,
    "handoff.checks.display": E,
    "handoff.checks.iommu": E,
    "handoff.checks.kernel": E,
    "handoff.checks.kvm": E,
    "handoff.checks.memlock": E,
    "handoff.checks.modprobe": E,
    "handoff.checks.nodes": E,
    "handoff.checks.profile_files": E,
    "handoff.checks.qemu": E,
    "handoff.checks.reset": E,
    "handoff.checks.tune": E,
    "handoff.checks.tpm": E,
    "handoff.session.rundir": E,
    "handoff.base.systemctl": E,
    "handoff.control.server": E,
    "handoff.control.client": E,
    "handoff.session.memlock": E,
    "handoff.qemu.firmware_vars": E,
    "handoff.session.host_facts": E,
    "handoff.cli.profile_lookup": E,
    "handoff.session.resources": E,
    # orchestration
    "handoff.session.ladder": S,
    "handoff.session.supervisor": S,
    "handoff.session.start": S,
    "handoff.session.early": S,
    "handoff.session.recovery": S,
    # commands
    "handoff.cli.doctor": K,
    "handoff.cli.main": K,
    "handoff.cli.gpu": K,
    "handoff.cli.init": K,
    "handoff.cli.interop": K,
    "handoff.cli.live": K,
    "handoff.__main__": K,
}

#: What a pure core may never import: I/O, clocks, processes, sockets, the event loop.
IMPURE = frozenset(
    {
        "os", "time", "io", "subprocess", "socket", "trio", "evdev", "pyudev", "qemu",
        "asyncio", "fcntl", "select", "selectors", "termios", "threading", "ctypes",
        "shutil", "tempfile", "resource", "pwd", "grp", "signal", "glob", "urllib", "http",
    }
)

#: (core, impure module) pairs allowed anyway, each for a stated reason.
CORE_STDLIB_ALLOWED: dict[tuple[str, str], str] = {
    # os.path only: a profile's relative paths made absolute against the profile's
    # directory (abspath reads the working directory once, for a relative profile path).
    ("handoff.profile.reader", "os"): "os.path.abspath / normpath / expanduser",
    ("handoff.profile.parse", "os"): "os.path.abspath: load_profile names the file it read",
    # The signal numbers only (exit status 128 + SIGHUP/SIGINT/SIGTERM): no handler.
    ("handoff.session.end", "signal"): "signal.SIGHUP / SIGINT / SIGTERM as numbers",
}

#: Names that import by string at run time: invisible to this test, so refused.
DYNAMIC_IMPORT = frozenset({"importlib", "__import__", "import_module"})

#: Capability packages: none may import another in a loop (recovery registers, it
#: does not reach across). The journal is below them all.
CAPABILITIES = ("pci", "tune", "live", "display", "input", "qemu", "init", "checks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` inside ``module``."""
    if level == 0:
        return name or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    base = parts[: len(parts) - (level - 1)] if level > 1 else parts
    return ".".join([*base, name] if name else base)


def imports_of(module: str, source: str, *, is_package: bool = False) -> set[str]:
    """Absolute names a module imports, at any depth (lazy and relative imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(module, is_package, node.level, node.module)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def dynamic_imports(source: str) -> list[str]:
    """Every importlib / ``__import__`` / ``import_module`` a source names."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names]
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [n for n in names if n.split(".")[0] in DYNAMIC_IMPORT]
        elif isinstance(node, ast.Name) and node.id in DYNAMIC_IMPORT:
            found.append(node.id)
        elif isinstance(node, ast.Attribute) and node.attr in DYNAMIC_IMPORT:
            found.append(node.attr)
    return found


def handoff_target(name: str, layers: Mapping[str, Layer]) -> str | None:
    """The placed handoff module an import names: its longest placed prefix."""
    if name != "handoff" and not name.startswith("handoff."):
        return None
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in layers:
            return candidate
        parts.pop()
    return None


def violations(
    module: str, source: str, *, is_package: bool = False,
    layers: Mapping[str, Layer] = LAYERS,
) -> list[str]:
    """Everything wrong with one module's imports; empty when it keeps the layering."""
    mine = layers.get(module)
    if mine is None:
        return [f"{module} is not placed in LAYERS (and ARCHITECTURE.md)"]
    problems = [f"{module} imports by name at run time: {n}" for n in dynamic_imports(source)]
    for name in sorted(imports_of(module, source, is_package=is_package)):
        target = handoff_target(name, layers)
        if name.startswith("handoff") and target is None:
            problems.append(f"{module} imports {name}, which is not placed")
        if target is not None and target != module and layers[target] > mine:
            problems.append(f"{module} ({mine.name}) imports upward: {target} "
                            f"({layers[target].name})")
        if mine is Layer.CORE:
            top = name.split(".")[0]
            if top in IMPURE and (module, top) not in CORE_STDLIB_ALLOWED:
                problems.append(f"{module} is a pure core but imports {name}")
            if target is not None and layers[target] is Layer.EDGE:
                problems.append(f"{module} is a pure core but imports the edge {target}")
    return sorted(set(problems))


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_placed_and_every_placed_module_exists() -> None:
    names = {module_name(p) for p in MODULES}
    missing = sorted(names - LAYERS.keys())
    gone = sorted(LAYERS.keys() - names)
    assert not missing, f"place these modules in LAYERS (and ARCHITECTURE.md): {missing}"
    assert not gone, f"LAYERS names modules that no longer exist: {gone}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_a_module_keeps_the_layering(path: Path) -> None:
    found = violations(module_name(path), path.read_text(), is_package=path.name == "__init__.py")
    assert not found, "\n".join(found)


def test_the_capability_packages_form_no_loop() -> None:
    """Package A imports package B (any module of it): no path back from B to A."""
    edges: dict[str, set[str]] = {c: set() for c in (*CAPABILITIES, "journal")}
    for path in MODULES:
        me = module_name(path).split(".")
        if len(me) < 2 or me[1] not in edges:
            continue
        for name in imports_of(module_name(path), path.read_text(),
                               is_package=path.name == "__init__.py"):
            parts = name.split(".")
            if parts[0] == "handoff" and len(parts) > 1 and parts[1] in edges \
                    and parts[1] != me[1]:
                edges[me[1]].add(parts[1])
    assert not edges["journal"], f"handoff.journal imports capabilities: {edges['journal']}"

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
            for nxt in edges[start]
        )

    loops = sorted(f"{a} -> {b} -> ... -> {a}" for a in edges for b in edges[a]
                   if reaches(b, a, {b}))
    assert not loops, f"capability packages import each other in a loop: {loops}"


# --------------------------------------------------------------------------- the checker itself

#: A synthetic display core breaking every rule at once (the issue's example).
SYNTHETIC_CORE = """
import time

from ..pci import sysfs


def decide() -> None:
    import importlib

    importlib.import_module("handoff.session.supervisor")
"""


def with_synthetic(module: str, layer: Layer) -> dict[str, Layer]:
    return {**LAYERS, module: layer}


def test_the_checker_catches_a_relative_import_of_an_edge_from_a_core() -> None:
    found = violations("handoff.display.evil", SYNTHETIC_CORE,
                       layers=with_synthetic("handoff.display.evil", Layer.CORE))
    assert "handoff.display.evil is a pure core but imports the edge handoff.pci.sysfs" in found


def test_the_checker_catches_time_in_a_core() -> None:
    found = violations("handoff.display.evil", SYNTHETIC_CORE,
                       layers=with_synthetic("handoff.display.evil", Layer.CORE))
    assert "handoff.display.evil is a pure core but imports time" in found


def test_the_checker_catches_importlib_anywhere_in_the_package() -> None:
    for layer in Layer:
        found = violations("handoff.display.evil", SYNTHETIC_CORE,
                           layers=with_synthetic("handoff.display.evil", layer))
        assert "handoff.display.evil imports by name at run time: importlib" in found
        assert "handoff.display.evil imports by name at run time: import_module" in found
    dunder = 'def load() -> object:\n    return __import__("handoff.session.supervisor")\n'
    found = violations("handoff.tune.evil", dunder,
                       layers=with_synthetic("handoff.tune.evil", Layer.EDGE))
    assert found == ["handoff.tune.evil imports by name at run time: __import__"]


def test_the_checker_catches_an_unplaced_module_whatever_its_folder() -> None:
    for module in ("handoff.display.newthing", "handoff.tune.newthing", "handoff.input.newthing"):
        assert violations(module, "") == [f"{module} is not placed in LAYERS (and ARCHITECTURE.md)"]


def test_the_checker_catches_an_upward_import_relative_or_lazy() -> None:
    lazy = "def f() -> None:\n    from ..session import ladder\n"
    found = violations("handoff.pci.evil", lazy, layers=with_synthetic("handoff.pci.evil", E))
    assert found == ["handoff.pci.evil (EDGE) imports upward: handoff.session.ladder (SESSION)"]
    package = "from .sysfs import read_device\n"
    assert violations("handoff.pci", package, is_package=True) == []


def test_the_checker_resolves_relative_imports_as_python_does() -> None:
    assert resolve("handoff.display.model", False, 2, "pci") == "handoff.pci"
    assert resolve("handoff.display.model", False, 1, None) == "handoff.display"
    assert resolve("handoff.display", True, 1, "model") == "handoff.display.model"
    assert resolve("handoff.cli.main", False, 1, "gpu") == "handoff.cli.gpu"
    assert resolve("handoff.cli.main", False, 2, "base.errors") == "handoff.base.errors"


def test_the_checker_passes_a_clean_core() -> None:
    clean = "from __future__ import annotations\n\nimport enum\n\nfrom ..errors import TuneError\n"
    assert violations("handoff.tune.clean", clean,
                      layers=with_synthetic("handoff.tune.clean", C)) == []
