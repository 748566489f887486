"""``[[passthrough]] reset`` across entries: what the key cannot be combined with. Pure.

The key itself is an enum the reader parses (:class:`handoff.pci.reset.ResetChoice`);
this checks it against the rest of the entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from handoff.base.errors import ProfileError
from handoff.pci.reset import ResetChoice
from handoff.profile.model import Passthrough


def check_passthrough_resets(source: Path, passthrough: Sequence[Passthrough]) -> None:
    """A pinned reset on a live group is refused: the live hand-off does not pin it."""
    for index, entry in enumerate(passthrough):
        if entry.live and entry.reset is not ResetChoice.AUTO:
            raise ProfileError(
                f'found "{entry.reset.value}" with live = true; expected reset = "auto" on a '
                "live group (the live hand-off does not pin reset_method)",
                path=str(source),
                key=f"passthrough[{index}].reset",
                fix="remove reset from this entry, or live = true",
            )
