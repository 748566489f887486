"""IOMMU: is it on, does the kernel command line say what it should, is
interrupt remapping active.

What "on" means here is what VFIO needs: IOMMU units registered in
/sys/class/iommu (dmar0 on Intel, ivhd0 on AMD) and groups in
/sys/kernel/iommu_groups. The kernel log would say the same ("DMAR: Intel(R)
Virtualization Technology for Directed I/O", the seed's check) but dmesg is
restricted to root on most distributions and its ring buffer rotates, so
sysfs is the reliable source.
"""

from __future__ import annotations

from handoff.checks import Check, DoctorEnv, fail, ok, read_text, skip, warn
from handoff.checks.cpu import CpuInfo, Vendor
from handoff.pci.model import GPU_DRIVERS, IommuState
from handoff.pci.sysfs import read_iommu

CMDLINE_DOC = "contrib/kernel-cmdline/ (GRUB, systemd-boot, Gentoo)"


def iommu_vendor(state: IommuState, cpu: CpuInfo) -> Vendor:
    """Whose IOMMU this is: the registered units say it (dmar*: Intel VT-d, ivhd*:
    AMD-Vi), the CPU vendor only when none is registered. They differ in VMs (an
    emulated intel-iommu under an AMD-flavoured CPU model, as in the testbed)."""
    if any(u.startswith("dmar") for u in state.units):
        return Vendor.INTEL
    if any(u.startswith("ivhd") for u in state.units):
        return Vendor.AMD
    return cpu.vendor


def parse_cmdline(text: str) -> list[tuple[str, str | None]]:
    """/proc/cmdline as (key, value) pairs; ``--`` ends the kernel's part (the rest is init's).

    Quoting follows the kernel's next_arg(): double quotes group spaces.
    """
    params: list[tuple[str, str | None]] = []
    token = ""
    in_quote = False
    tokens: list[str] = []
    for ch in text.strip():
        if ch == '"':
            in_quote = not in_quote
        elif ch.isspace() and not in_quote:
            if token:
                tokens.append(token)
            token = ""
        else:
            token += ch
    if token:
        tokens.append(token)
    for tok in tokens:
        if tok == "--":
            break
        key, sep, value = tok.partition("=")
        params.append((key, value if sep else None))
    return params


def cmdline_values(params: list[tuple[str, str | None]], key: str) -> list[str]:
    """Every value given for ``key`` (comma lists split): intel_iommu=on,sm_on -> [on, sm_on]."""
    out: list[str] = []
    for k, v in params:
        if k == key and v is not None:
            out.extend(v.split(","))
    return out


def iommu_enable_fix(vendor: Vendor) -> str:
    """What turns the IOMMU on, by CPU vendor (the seed's first configuration step)."""
    if vendor is Vendor.AMD:
        return (
            "enable IOMMU (AMD-Vi) in the firmware setup; the kernel turns it on by default "
            "unless the command line says amd_iommu=off or iommu=off; then reboot"
        )
    return (
        "enable VT-d in the firmware setup and add intel_iommu=on iommu=pt to the kernel "
        f"command line (examples in {CMDLINE_DOC}), then reboot"
    )


def check_iommu(env: DoctorEnv, cpu: CpuInfo) -> Check:
    name = "iommu"
    state = read_iommu(env.host)
    groups_dir = env.host.sys / "kernel" / "iommu_groups"
    if state.enabled:
        units = ", ".join(state.units) if state.units else "no /sys/class/iommu entry"
        return ok(name, f"{len(state.groups)} IOMMU groups in {groups_dir} ({units})")
    if state.units:
        return fail(
            name,
            f"IOMMU units {', '.join(state.units)} registered but {groups_dir} is empty",
            "the IOMMU is in passthrough-only or disabled mode: remove iommu=off / "
            "intel_iommu=off / amd_iommu=off from the kernel command line, then reboot",
        )
    return fail(
        name,
        f"no IOMMU: {env.host.sys / 'class' / 'iommu'} and {groups_dir} are empty",
        iommu_enable_fix(cpu.vendor),
    )


def check_kernel_cmdline(env: DoctorEnv, cpu: CpuInfo) -> Check:
    """Read /proc/cmdline for the options the seed adds, and for its mistakes.

    Found "wrong" here means provably without effect: ``iommu=on`` is not a
    value x86 knows, ``amd_iommu=on`` neither (AMD-Vi is on by default), and
    ``radeon.blacklist=1`` becomes an unknown module parameter; the working
    spelling is ``modprobe.blacklist=radeon,amdgpu``.
    """
    name = "kernel-cmdline"
    path = env.host.proc / "cmdline"
    text = read_text(path)
    if text is None:
        return skip(name, f"{path} is not readable")
    params = parse_cmdline(text)
    state = read_iommu(env.host)
    notes: list[str] = []
    problems: list[str] = []
    fixes: list[str] = []

    off = [
        f"{k}=off"
        for k in ("iommu", "intel_iommu", "amd_iommu")
        if "off" in cmdline_values(params, k)
    ]
    if off:
        problems.append(f"{' '.join(off)} disables the IOMMU")
        fixes.append(f"remove {' '.join(off)}")

    vendor = iommu_vendor(state, cpu)
    if vendor is Vendor.INTEL or vendor is Vendor.OTHER:
        if "on" in cmdline_values(params, "intel_iommu"):
            notes.append("intel_iommu=on")
        elif state.enabled:
            notes.append("no intel_iommu=on, but this kernel enables the IOMMU by default")
        elif vendor is Vendor.INTEL:
            problems.append("intel_iommu=on is missing")
            fixes.append("add intel_iommu=on")
    if vendor is Vendor.AMD and "on" in cmdline_values(params, "intel_iommu"):
        notes.append("intel_iommu=on does nothing with an AMD IOMMU")
    if "on" in cmdline_values(params, "amd_iommu"):
        notes.append(
            "amd_iommu=on is not a value the kernel knows (harmless; AMD-Vi is on by default)"
        )
    if "on" in cmdline_values(params, "iommu"):
        notes.append("iommu=on is not an x86 value (harmless)")

    if "pt" in cmdline_values(params, "iommu"):
        notes.append("iommu=pt")
    else:
        notes.append("iommu=pt not set (optional: host devices then skip DMA translation)")

    for key, value in params:
        driver, dot, param = key.partition(".")
        # "<gpu driver>.blacklist=1" (the seed's alternative to modprobe.d) is handed
        # to the module as an unknown parameter: it blacklists nothing.
        if dot and param == "blacklist" and driver in GPU_DRIVERS:
            problems.append(
                f"{key}={value} is handed to {driver} as an unknown parameter and "
                "blacklists nothing"
            )
            fixes.append(
                f"replace it with modprobe.blacklist={driver} (or use the softdeps in "
                "contrib/modprobe.d/handoff-vfio.conf)"
            )
    fbcon = cmdline_values(params, "fbcon")
    if any(v.startswith("map:") for v in fbcon):
        notes.append("fbcon=" + ",".join(fbcon))

    detail = f"{path}: " + "; ".join(problems + notes)
    if problems:
        fix = "; ".join(fixes) + f" on the kernel command line ({CMDLINE_DOC}), then reboot"
        if any("missing" in p or "disables" in p for p in problems):
            return fail(name, detail, fix)
        return warn(name, detail, fix)
    return ok(name, detail)


def _intel_ecap_ir(env: DoctorEnv, units: tuple[str, ...]) -> bool | None:
    """Bit 3 (IR) of the VT-d extended capability register of every DMAR unit.

    None when no unit exposes ``intel-iommu/ecap`` (AMD, or no IOMMU).
    """
    seen = False
    for unit in units:
        text = read_text(env.host.sys / "class" / "iommu" / unit / "intel-iommu" / "ecap")
        if text is None:
            continue
        seen = True
        try:
            ecap = int(text.strip(), 16)
        except ValueError:
            return None
        if not ecap & (1 << 3):
            return False
    return True if seen else None


def check_interrupt_remapping(env: DoctorEnv, cpu: CpuInfo) -> Check:
    """Is interrupt remapping in use, which vfio_iommu_type1 requires?

    The reliable sign that it is *enabled* (not just supported) is an
    interrupt chip named ``IR-...`` in /proc/interrupts (IR-IO-APIC,
    IR-PCI-MSI): the kernel names its irq domains after the remapping
    layer they go through. The VT-d ``ecap`` register (bit 3) only says the
    hardware could; it is used to tell "supported but off" from "absent".
    """
    name = "interrupt-remapping"
    state = read_iommu(env.host)
    interrupts = read_text(env.host.proc / "interrupts") or ""
    unsafe = read_text(
        env.host.sys / "module" / "vfio_iommu_type1" / "parameters" / "allow_unsafe_interrupts"
    )
    if not state.enabled:
        return skip(name, "the IOMMU is off (see the iommu check)")
    if any(word.startswith("IR-") for word in interrupts.split()):
        return ok(name, f"IR- interrupt chips in {env.host.proc / 'interrupts'}")
    if unsafe is not None and unsafe.strip() == "Y":
        return warn(
            name,
            "no interrupt remapping; vfio_iommu_type1 allow_unsafe_interrupts=Y lets devices "
            "be assigned anyway",
            "a guest can then forge interrupts (MSI) to the host: use this only on a machine "
            "you trust, or enable interrupt remapping in the firmware",
        )
    supported = _intel_ecap_ir(env, state.units)
    if supported:
        return fail(
            name,
            "the DMAR units support interrupt remapping (ecap bit 3) but no IR- chips are "
            f"in {env.host.proc / 'interrupts'}",
            "remove intremap=off (or intremap=nosid) from the kernel command line and enable "
            "x2APIC/interrupt remapping in the firmware, then reboot",
        )
    return fail(
        name,
        "no interrupt remapping: vfio_iommu_type1 refuses to assign devices without it",
        "enable interrupt remapping in the firmware (on Intel: CONFIG_IRQ_REMAP in the kernel), "
        "or, on a machine you trust, put 'options vfio_iommu_type1 allow_unsafe_interrupts=1' "
        "in /etc/modprobe.d/",
    )
