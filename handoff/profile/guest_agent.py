"""``[guest_agent]``: a channel for the QEMU guest agent, read with the profile reader. Pure.

``enabled = true`` gives the guest a virtio-serial port named
``org.qemu.guest_agent.0`` (Windows: the virtio-win guest agent; Linux:
qemu-guest-agent). What handoff asks it is :mod:`handoff.qemu.agent`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from handoff.profile.model import GuestAgent
from handoff.profile.reader import FieldParser, Reader

#: Every [guest_agent] key is a bool, read by its type.
GUEST_AGENT_KEYS: Mapping[str, FieldParser] = {}


def parse_guest_agent(r: Reader, data: Mapping[str, Any]) -> GuestAgent:
    """The ``[guest_agent]`` section (absent: no agent channel)."""
    t = r.section(data, "guest_agent")
    return GuestAgent(**r.fields(t, "guest_agent", GuestAgent, GUEST_AGENT_KEYS))
