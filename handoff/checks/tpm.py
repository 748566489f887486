"""A profile's emulated TPM: swtpm and swtpm_setup are installed and swtpm emulates TPM 2.0.

Only when the profile asks for ``[tpm] type = "emulated"``. Reads
``swtpm socket --print-capabilities`` (the feature list libvirt reads too);
the verdict on its output is :func:`handoff.tpm.plan.supports_tpm2`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

from handoff.checks import Check, fail, ok, skip
from handoff.profile import Profile, TpmType
from handoff.tpm.plan import PACKAGES, SWTPM, SWTPM_SETUP, supports_tpm2

#: Seconds swtpm gets to print its capabilities.
CAPABILITIES_TIMEOUT = 30.0
_INSTALL = f"apt-get install {' '.join(PACKAGES)}"


def read_capabilities(binary: str) -> str | None:
    """``swtpm socket --print-capabilities``'s output, None when it does not run."""
    try:
        done = subprocess.run(
            [binary, "socket", "--print-capabilities"], capture_output=True, text=True,
            timeout=CAPABILITIES_TIMEOUT, check=False, stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def check_tpm(
    profile: Profile,
    which: Callable[[str], str | None] = shutil.which,
    capabilities: Callable[[str], str | None] = read_capabilities,
) -> Check:
    name = "tpm"
    if profile.tpm.type is not TpmType.EMULATED:
        return skip(name, "the profile has no [tpm]")
    missing = [binary for binary in (SWTPM, SWTPM_SETUP) if which(binary) is None]
    if missing:
        return fail(
            name, f'[tpm] type = "emulated" needs {" and ".join(missing)}: not installed',
            f'{_INSTALL} (or set [tpm] type = "none")',
        )
    binary = which(SWTPM) or SWTPM
    text = capabilities(binary)
    if text is None:
        return fail(
            name, f"`{binary} socket --print-capabilities` failed",
            f"reinstall swtpm ({_INSTALL}) and run the command to see why",
        )
    if not supports_tpm2(text):
        return fail(
            name, f"{binary} does not list tpm-2.0 among its features: {text.strip()[:120]}",
            f"install a swtpm built with TPM 2.0 (libtpms 0.6 or later): {_INSTALL}",
        )
    return ok(name, f"{binary} emulates TPM 2.0; the state is {profile.tpm.state}")
