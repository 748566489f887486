"""modprobe.d: what the host's module configuration does to passthrough.

Two things matter: a ``blacklist`` line names exactly one module (kmod
ignores the rest of the line, so the seed's ``blacklist radeon amdgpu``
blacklists radeon only and leaves amdgpu free to grab the card), and
``options vfio-pci ids=`` reserves every device with those ids at boot. The
files are read in kmod's directories; a file in /etc overrides one of the
same name in /run and /usr/lib, as kmod does.
"""

from __future__ import annotations

from pathlib import Path

from handoff.checks import Check, DoctorEnv, ok, read_text, warn
from handoff.pci.model import GPU_DRIVERS


def config_files(dirs: tuple[Path, ...]) -> list[Path]:
    """*.conf files in kmod's precedence: the first directory holding a name wins."""
    chosen: dict[str, Path] = {}
    for directory in dirs:
        try:
            entries = sorted(directory.iterdir())
        except OSError:
            continue
        for path in entries:
            if path.suffix == ".conf" and path.name not in chosen:
                chosen[path.name] = path
    return [chosen[name] for name in sorted(chosen)]


def _norm(name: str) -> str:
    return name.replace("-", "_")


def check_modprobe_config(env: DoctorEnv) -> Check:
    name = "modprobe.d"
    files = config_files(env.modprobe_dirs)
    blacklisted: list[str] = []
    ignored: list[str] = []
    vfio_ids: list[str] = []
    for path in files:
        for number, raw in enumerate((read_text(path) or "").splitlines(), start=1):
            words = raw.split("#", 1)[0].split()
            if not words:
                continue
            if words[0] == "blacklist" and len(words) >= 2:
                blacklisted.append(_norm(words[1]))
                if len(words) > 2:
                    ignored.append(f"{path}:{number}: '{raw.strip()}' ({' '.join(words[2:])})")
            elif words[0] == "options" and len(words) >= 3 and _norm(words[1]) == "vfio_pci":
                for option in words[2:]:
                    if option.startswith("ids="):
                        vfio_ids.append(option[4:])
    parts: list[str] = []
    gpu = [d for d in GPU_DRIVERS if d in blacklisted]
    if gpu:
        parts.append(
            "blacklisted: " + ", ".join(gpu) + " (a card on these drivers has no host driver to "
            "return to unless the module is loaded)"
        )
    if vfio_ids:
        parts.append(
            f"vfio-pci ids={','.join(vfio_ids)} reserves every device with these ids at boot"
        )
    where = ", ".join(str(d) for d in env.modprobe_dirs[:2])
    detail = "; ".join(parts) if parts else f"nothing about GPUs or vfio-pci in {where}"
    if ignored:
        return warn(
            name,
            "a blacklist line names one module, kmod ignores the rest: " + "; ".join(ignored),
            "write one `blacklist NAME` line per module (contrib/modprobe.d/handoff-vfio.conf "
            "shows the alternatives)",
        )
    return ok(name, detail)
