"""``[tpm]``: the guest's TPM 2.0, read with the profile reader's key table. Pure.

``type = "none" | "emulated"`` (an enum: read by its type); ``state`` is the
VM's own swtpm state directory (absolute, or relative to the profile; left
out: ``<name>.tpm`` next to the profile, like the OVMF vars copy
``<name>.OVMF_VARS.fd``). What the directory holds and how swtpm runs is
:mod:`handoff.tpm`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from handoff.profile.model import Tpm, TpmType
from handoff.profile.reader import FieldParser, File, Reader

#: The keys a field's type does not read ([tpm] type is an enum).
TPM_KEYS: Mapping[str, FieldParser] = {"state": File()}


def parse_tpm(r: Reader, data: Mapping[str, Any], vm_name: str) -> Tpm:
    """The ``[tpm]`` section (absent: no TPM)."""
    t = r.section(data, "tpm")
    v = r.fields(t, "tpm", Tpm, TPM_KEYS)
    if v["type"] is TpmType.NONE:
        if v["state"] is not None:
            raise r.error(
                "tpm.state",
                'found a state directory with type = "none"; expected state only for '
                'type = "emulated"',
                'remove state, or set type = "emulated" to give the guest a TPM 2.0',
            )
        return Tpm()
    if v["state"] is None:
        v["state"] = r.base / f"{vm_name}.tpm"
    return Tpm(**v)
