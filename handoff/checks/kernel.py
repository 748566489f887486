"""The running kernel: its version and whether vfio / vfio-pci can be had.

A module is available when it is loaded (/sys/module/NAME with an
``initstate``), built in (/sys/module/NAME without one, or listed in
modules.builtin) or loadable (listed in modules.dep). The release comes
from /proc/sys/kernel/osrelease rather than uname(2) so a fake /proc and the
testbed's kernel answer for themselves.
"""

from __future__ import annotations

import gzip
import re
from enum import Enum

from handoff.checks import Check, DoctorEnv, fail, ok, read_text, skip, warn
from handoff.profile import Profile

# driver_override (the only binding method handoff uses) appeared in 3.16;
# the seed asks for 4.1 for vfio-pci to be dependable.
DRIVER_OVERRIDE_SINCE = (3, 16)
VFIO_PCI_SINCE = (4, 1)


def kernel_release(env: DoctorEnv) -> str | None:
    text = read_text(env.host.proc / "sys" / "kernel" / "osrelease")
    return text.strip() if text else None


def parse_version(release: str) -> tuple[int, int] | None:
    """``6.1.0-56-amd64`` -> (6, 1)."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_kernel_version(env: DoctorEnv) -> Check:
    name = "kernel-version"
    release = kernel_release(env)
    where = env.host.proc / "sys" / "kernel" / "osrelease"
    version = parse_version(release) if release else None
    if release is None or version is None:
        return warn(name, f"cannot read the kernel release from {where}", "mount /proc")
    if version < DRIVER_OVERRIDE_SINCE:
        return fail(
            name,
            f"kernel {release} has no PCI driver_override (needs 3.16 or later)",
            "boot a kernel of version 4.1 or later",
        )
    if version < VFIO_PCI_SINCE:
        return warn(
            name,
            f"kernel {release}: vfio-pci is dependable from 4.1 on",
            "boot a kernel of version 4.1 or later",
        )
    return ok(name, f"kernel {release} (driver_override and vfio-pci available since 4.1)")


class ModuleState(Enum):
    LOADED = "loaded"
    BUILTIN = "built in"
    LOADABLE = "loadable"
    MISSING = "missing"


def _norm(name: str) -> str:
    return name.replace("-", "_")


_KO = re.compile(r"(?:^|/)([^/]+)\.ko(?:\.(?:xz|gz|zst))?$")


def _listed(text: str | None, module: str) -> bool:
    """Does a modules.dep / modules.builtin text name ``module``?"""
    if not text:
        return False
    want = _norm(module)
    for line in text.splitlines():
        path = line.split(":", 1)[0].strip()
        m = _KO.search(path)
        if m and _norm(m.group(1)) == want:
            return True
    return False


def module_state(env: DoctorEnv, module: str) -> ModuleState:
    sysdir = env.host.sys / "module" / _norm(module)
    if sysdir.is_dir():
        return ModuleState.LOADED if (sysdir / "initstate").exists() else ModuleState.BUILTIN
    release = kernel_release(env)
    if release is None:
        return ModuleState.MISSING
    base = env.modules / release
    if _listed(read_text(base / "modules.builtin"), module):
        return ModuleState.BUILTIN
    if _listed(read_text(base / "modules.dep"), module):
        return ModuleState.LOADABLE
    return ModuleState.MISSING


# The kernel options the seed lists, by module.
_CONFIG = {
    "vfio": "CONFIG_VFIO",
    "vfio_pci": "CONFIG_VFIO_PCI (and CONFIG_VFIO_PCI_VGA for x-vga)",
    "vfio_iommu_type1": "CONFIG_VFIO_IOMMU_TYPE1",
}


def check_module(env: DoctorEnv, module: str) -> Check:
    """One kernel module handoff needs: vfio, vfio_iommu_type1, vfio_pci."""
    name = f"module:{module}"
    state = module_state(env, module)
    release = kernel_release(env) or "?"
    if state is ModuleState.MISSING and not (env.modules / release).is_dir():
        return fail(
            name,
            f"{module} is not loaded and {env.modules / release} does not exist: this kernel "
            "has no modules installed",
            "install the running kernel's modules (Debian: linux-image-$(uname -r)), or build "
            f"the kernel with {_CONFIG.get(module, module)}=y",
        )
    if state is ModuleState.MISSING:
        return fail(
            name,
            f"{module} is neither loaded, built in nor in {env.modules / release / 'modules.dep'}",
            f"build the kernel with {_CONFIG.get(module, module)} (=m or =y), "
            "or install the distribution's kernel modules package",
        )
    if state is ModuleState.LOADABLE:
        return ok(name, f"{module} is loadable (handoff runs modprobe {module} when it binds)")
    return ok(name, f"{module} is {state.value}")


def kernel_config(env: DoctorEnv) -> tuple[str, str] | None:
    """(where, text) of the running kernel's build configuration, when readable:
    /proc/config.gz (CONFIG_IKCONFIG_PROC) or /boot/config-RELEASE (distributions)."""
    gz = env.host.proc / "config.gz"
    try:
        return str(gz), gzip.decompress(gz.read_bytes()).decode("utf-8", "replace")
    except (OSError, EOFError, gzip.BadGzipFile):
        pass
    release = kernel_release(env)
    if release is not None:
        path = env.boot / f"config-{release}"
        text = read_text(path)
        if text is not None:
            return str(path), text
    return None


def check_vfio_pci_vga(env: DoctorEnv, profile: Profile) -> Check:
    """x_vga = true (the seed's ``x-vga=on``) needs a kernel built with CONFIG_VFIO_PCI_VGA:
    without it QEMU fails at start with "vfio: ... failed to get region ... VGA"."""
    name = "vfio-pci-vga"
    if not any(p.x_vga for p in profile.passthrough):
        return skip(name, "no [[passthrough]] with x_vga = true")
    found = kernel_config(env)
    if found is None:
        return skip(
            name,
            f"cannot read the kernel configuration ({env.host.proc / 'config.gz'}, "
            f"{env.boot}/config-*) to check CONFIG_VFIO_PCI_VGA",
        )
    where, text = found
    if re.search(r"^CONFIG_VFIO_PCI_VGA=y$", text, re.MULTILINE):
        return ok(name, f"CONFIG_VFIO_PCI_VGA=y in {where}")
    return fail(
        name,
        f"x_vga = true needs CONFIG_VFIO_PCI_VGA, which {where} does not set",
        "build the kernel with CONFIG_VFIO_PCI_VGA=y (contrib/kernel-cmdline/"
        "gentoo-kernel.config), or remove x_vga (UEFI guests with OVMF do not need legacy VGA)",
    )
