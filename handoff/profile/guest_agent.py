"""``[guest_agent]``: a channel for the QEMU guest agent, parsed with the profile reader. Pure.

``enabled = true`` gives the guest a virtio-serial port named
``org.qemu.guest_agent.0`` (Windows: the virtio-win guest agent; Linux:
qemu-guest-agent). What handoff asks it is :mod:`handoff.qemu.agent`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from handoff.profile.model import SECTION_KEYS, GuestAgent
from handoff.profile.reader import Reader


def parse_guest_agent(r: Reader, data: Mapping[str, Any]) -> GuestAgent:
    """The ``[guest_agent]`` section (absent: no agent channel)."""
    t = r.table(data, "guest_agent")
    r.check_keys(t, "guest_agent", SECTION_KEYS["guest_agent"])
    return GuestAgent(enabled=r.boolean(t, "guest_agent", "enabled", False))
