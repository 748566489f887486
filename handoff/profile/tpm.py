"""``[tpm]``: the guest's TPM 2.0, parsed with the profile reader. Pure.

``type = "none" | "emulated"``; ``state`` is the VM's own swtpm state
directory (absolute, or relative to the profile; left out: ``<name>.tpm``
next to the profile, like the OVMF vars copy ``<name>.OVMF_VARS.fd``).
What the directory holds and how swtpm runs is :mod:`handoff.tpm`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from handoff.profile.model import SECTION_KEYS, Tpm, TpmType
from handoff.profile.reader import Reader


def parse_tpm(r: Reader, data: Mapping[str, Any], vm_name: str) -> Tpm:
    """The ``[tpm]`` section (absent: no TPM)."""
    t = r.table(data, "tpm")
    r.check_keys(t, "tpm", SECTION_KEYS["tpm"])
    kind = r.enum(t, "tpm", "type", TpmType, TpmType.NONE)
    state = r.path(t, "tpm", "state")
    if kind is TpmType.NONE:
        if state is not None:
            raise r.error(
                "tpm.state",
                'found a state directory with type = "none"; expected state only for '
                'type = "emulated"',
                'remove state, or set type = "emulated" to give the guest a TPM 2.0',
            )
        return Tpm()
    if state is None:
        state = r.base / f"{vm_name}.tpm"
    return Tpm(type=kind, state=state)
