"""``[monitor]``: parsing the DDC/CI input switch. Pure.

``ddc_bus`` (/dev/i2c-N) or ``ddc_display`` (ddcutil's number), not both;
``guest_input``/``host_input`` as MCCS names (``"DisplayPort1"``, ``"HDMI2"``)
or raw VCP 0x60 numbers 1-255; ``follow`` input or gpu (a live GPU).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from handoff.monitor.mccs import INPUT_SOURCES, closest_input, input_value
from handoff.profile.model import SECTION_KEYS, Monitor, MonitorFollow

if TYPE_CHECKING:
    from handoff.profile.parse import _Reader


def parse_monitor(r: _Reader, data: Mapping[str, Any], live: bool) -> Monitor:
    """``[monitor]``; ``live``: the profile has a live GPU group (for follow = "gpu")."""
    t = r.table(data, "monitor")
    r.check_keys(t, "monitor", SECTION_KEYS["monitor"])
    if not t:
        return Monitor()
    bus = r.integer(t, "monitor", "ddc_bus", 0, 1023)
    display = r.integer(t, "monitor", "ddc_display", 1, 64)
    if (bus is None) == (display is None):
        raise r.error(
            "monitor.ddc_bus",
            "found " + ("both ddc_bus and ddc_display" if bus is not None else "neither ddc_bus "
                        "nor ddc_display") + "; expected exactly one",
            "write ddc_bus = N for /dev/i2c-N (`ddcutil detect` lists it), or ddc_display = N",
        )
    guest = _input(r, t, "guest_input")
    host = _input(r, t, "host_input")
    if guest is None and host is None:
        raise r.error(
            "monitor.guest_input", "is missing; expected the input the guest's GPU drives",
            'write guest_input = "DisplayPort1" and host_input = "HDMI1" (your monitor\'s '
            "inputs; `ddcutil capabilities` lists them)",
        )
    follow = r.enum(t, "monitor", "follow", MonitorFollow, MonitorFollow.INPUT)
    if follow is MonitorFollow.GPU and not live:
        raise r.error(
            "monitor.follow",
            'found "gpu" with no [[passthrough]] live = true; expected a live GPU to follow',
            'write follow = "input", or mark the GPU live = true',
        )
    return Monitor(ddc_bus=bus, ddc_display=display, guest_input=guest, host_input=host,
                   follow=follow)


def _input(r: _Reader, t: Mapping[str, Any], name: str) -> int | None:
    if name not in t:
        return None
    value = t[name]
    key = f"monitor.{name}"
    names = ", ".join(INPUT_SOURCES)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise r.error(key, f"found {value!r}; expected an input name or a number 1-255",
                      f'write {name} = "HDMI1" (one of: {names})')
    if isinstance(value, int):
        if not 1 <= value <= 255:
            raise r.error(key, f"found {value}; expected a VCP 0x60 value from 1 to 255",
                          f'write {name} = "HDMI1", or the number the monitor uses (0x0f)')
        return value
    found = input_value(value)
    if found is None:
        close = closest_input(value)
        raise r.error(
            key, f'found "{value}"; expected an MCCS input name',
            (f'did you mean "{close}"? ' if close else "") + f"one of: {names}; or the raw "
            "number (`ddcutil getvcp 60` shows the current one)",
        )
    return found
