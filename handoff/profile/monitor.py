"""``[monitor]``: parsing the DDC/CI input switch. Pure.

``ddc_bus`` (/dev/i2c-N) or ``ddc_display`` (ddcutil's number), not both;
``guest_input``/``host_input`` as MCCS names (``"DisplayPort1"``, ``"HDMI2"``)
or raw VCP 0x60 numbers 1-255; ``follow`` input or gpu (a live GPU).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from handoff.monitor.mccs import INPUT_SOURCES, closest_input, input_value
from handoff.profile.model import Monitor, MonitorFollow
from handoff.profile.reader import Custom, FieldParser, Reader, Whole


def _input(r: Reader, t: Mapping[str, Any], prefix: str, name: str, default: Any) -> Any:
    if name not in t:
        return None
    value = t[name]
    key = f"{prefix}.{name}"
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


MONITOR_KEYS: Mapping[str, FieldParser] = {
    "ddc_bus": Whole(0, 1023),
    "ddc_display": Whole(1, 64),
    "guest_input": Custom(_input),
    "host_input": Custom(_input),
}


def parse_monitor(r: Reader, data: Mapping[str, Any], live: bool) -> Monitor:
    """``[monitor]``; ``live``: the profile has a live GPU group (for follow = "gpu")."""
    t = r.section(data, "monitor")
    if not t:
        return Monitor()
    chosen = Monitor(**r.fields(t, "monitor", Monitor, MONITOR_KEYS))
    if (chosen.ddc_bus is None) == (chosen.ddc_display is None):
        raise r.error(
            "monitor.ddc_bus",
            "found " + ("both ddc_bus and ddc_display" if chosen.ddc_bus is not None
                        else "neither ddc_bus nor ddc_display") + "; expected exactly one",
            "write ddc_bus = N for /dev/i2c-N (`ddcutil detect` lists it), or ddc_display = N",
        )
    if chosen.guest_input is None and chosen.host_input is None:
        raise r.error(
            "monitor.guest_input", "is missing; expected the input the guest's GPU drives",
            'write guest_input = "DisplayPort1" and host_input = "HDMI1" (your monitor\'s '
            "inputs; `ddcutil capabilities` lists them)",
        )
    if chosen.follow is MonitorFollow.GPU and not live:
        raise r.error(
            "monitor.follow",
            'found "gpu" with no [[passthrough]] live = true; expected a live GPU to follow',
            'write follow = "input", or mark the GPU live = true',
        )
    return chosen
