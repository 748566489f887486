"""swtpm's commands and the verdicts about its state, decided from values. Pure.

The state directory is the VM's, like its OVMF vars copy: created once with
``swtpm_setup`` the way libvirt does (TPM 2.0, an RSA and an ECC EK with
their certificates, a platform certificate, the NVRAM locked), kept across
runs, never removed. swtpm runs with ``--terminate``: it exits as soon as
its one client, QEMU, hangs up, however QEMU ended.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PACKAGES",
    "STATE_FILE",
    "SWTPM",
    "SWTPM_SETUP",
    "StateFacts",
    "StateVerdict",
    "judge_state",
    "localca_config",
    "setup_argv",
    "supports_tpm2",
    "swtpm_argv",
]

SWTPM = "swtpm"
SWTPM_SETUP = "swtpm_setup"
#: The Debian packages that provide them (swtpm_setup is in swtpm-tools).
PACKAGES = ("swtpm", "swtpm-tools")
#: The file swtpm keeps a TPM 2.0's permanent state in (its NVRAM, the EKs).
STATE_FILE = "tpm2-00.permall"
#: Where the per-VM certificate authority lives when handoff is not root.
LOCALCA_DIR = "localca"


def setup_argv(state: Path, vm_name: str, config: Path | None = None) -> tuple[str, ...]:
    """``swtpm_setup`` creating a TPM 2.0 in ``state`` as libvirt does (qemu_tpm.c).

    ``config`` is a swtpm_setup.conf to use instead of /etc's (unprivileged
    runs: the system's certificate authority belongs to root and tss).
    """
    argv = [
        SWTPM_SETUP, "--tpm2", "--tpm-state", str(state), "--vmid", vm_name,
        "--createek", "--create-ek-cert", "--create-platform-cert", "--lock-nvram",
        "--not-overwrite",
    ]
    if config is not None:
        argv += ["--config", str(config)]
    return tuple(argv)


def swtpm_argv(state: Path, socket: Path, log_fd: int) -> tuple[str, ...]:
    """``swtpm socket`` serving ``state`` on the control socket ``socket`` (0600).

    QEMU connects to the control socket and hands swtpm the data channel over
    it; ``--terminate`` ends swtpm when that connection closes. Errors go to
    the inherited ``log_fd`` (the session's QEMU log), prefixed ``swtpm:``.
    """
    return (
        SWTPM, "socket", "--tpm2",
        "--tpmstate", f"dir={state},mode=0600",
        "--ctrl", f"type=unixio,path={socket},mode=0600",
        "--log", f"fd={log_fd},level=1,prefix=swtpm: ",
        "--terminate",
    )


def supports_tpm2(capabilities: str) -> bool:
    """Whether ``swtpm socket --print-capabilities`` output lists tpm-2.0."""
    try:
        data = json.loads(capabilities)
    except ValueError:
        return False
    features = data.get("features") if isinstance(data, dict) else None
    return isinstance(features, list) and "tpm-2.0" in features


def localca_config(directory: Path, localca_tool: str) -> dict[str, str]:
    """File name → text: a swtpm_setup.conf and its certificate authority's files, all
    in ``directory`` (a VM's own CA, for runs without root)."""
    ca = directory
    return {
        "swtpm_setup.conf": (
            f"create_certs_tool = {localca_tool}\n"
            f"create_certs_tool_config = {ca / 'swtpm-localca.conf'}\n"
            f"create_certs_tool_options = {ca / 'swtpm-localca.options'}\n"
            "active_pcr_banks = sha256\n"
        ),
        "swtpm-localca.conf": (
            f"statedir = {ca}\n"
            f"signingkey = {ca / 'signkey.pem'}\n"
            f"issuercert = {ca / 'issuercert.pem'}\n"
            f"certserial = {ca / 'certserial'}\n"
        ),
        "swtpm-localca.options": (
            "--platform-manufacturer handoff\n--platform-model QEMU\n--platform-version 1\n"
        ),
    }


@dataclass(frozen=True)
class StateFacts:
    """What is at the state path: None fields when it does not exist."""

    exists: bool
    is_dir: bool = False
    uid: int | None = None
    has_state: bool = False  # STATE_FILE is in it


class StateVerdict(enum.Enum):
    """What the resource does with the state path."""

    CREATE = "create"  # nothing there: swtpm_setup makes it
    USE = "use"  # the VM's state, owned by the user swtpm runs as
    NOT_A_DIRECTORY = "not-a-directory"
    NOT_A_TPM = "not-a-tpm"  # a directory without a TPM 2.0's state
    WRONG_OWNER = "wrong-owner"


def judge_state(facts: StateFacts, owner_uid: int) -> StateVerdict:
    """The verdict for a state path swtpm will run as ``owner_uid`` on.

    An existing directory is never re-created or re-owned silently: it holds
    the guest's keys (BitLocker's, Windows Hello's), so only what is provably
    empty is created, and anything else that is not ours is refused.
    """
    if not facts.exists:
        return StateVerdict.CREATE
    if not facts.is_dir:
        return StateVerdict.NOT_A_DIRECTORY
    if not facts.has_state:
        return StateVerdict.NOT_A_TPM
    if facts.uid != owner_uid:
        return StateVerdict.WRONG_OWNER
    return StateVerdict.USE
