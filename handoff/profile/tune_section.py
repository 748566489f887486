"""The profile's ``[cpu]`` and ``[memory]`` sections (vCPU pinning, hugepages).

Each key's parser and error text is in the table below, read by
:mod:`handoff.profile.reader`; the rules across keys and against ``[vm]``
(one pin list per vCPU, guest RAM in whole pages) follow. Pure.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from typing import Any

from handoff.base.errors import CpuListError, PinListError
from handoff.profile.model import Cpu as CpuSection
from handoff.profile.model import Memory as MemorySection
from handoff.profile.model import Vm
from handoff.profile.reader import Custom, FieldParser, Reader, Text, show
from handoff.tune.cpulist import parse_cpulist
from handoff.tune.model import (
    EMULATOR_AUTO,
    PIN_AUTO,
    PIN_NONE,
    EmulatorSpec,
    HugepageSize,
    PinMode,
    PinSpec,
)

#: A cpufreq governor name (scaling_available_governors lists such words), or "".
_GOVERNOR = re.compile(r"^[a-z0-9_]{0,32}$")


# --------------------------------------------------------------------------- [cpu]

_PIN_EXAMPLE = '["2,8", "3,9"]'


def _pin(r: Reader, t: Mapping[str, Any], prefix: str, key: str, default: Any) -> PinSpec:
    if "pin" not in t:
        return PIN_NONE
    value = t["pin"]
    expected = (
        f'"none", "auto" or an array with one host CPU list per vCPU such as {_PIN_EXAMPLE}'
    )
    if value == "none":
        return PIN_NONE
    if value == "auto":
        return PIN_AUTO
    if not isinstance(value, list):
        close = difflib.get_close_matches(value, ["none", "auto"], n=1, cutoff=0.5) if (
            isinstance(value, str)) else []
        fix = f'did you mean "{close[0]}"? write pin = "{close[0]}"' if close else (
            f'write pin = "auto", or pin = {_PIN_EXAMPLE} with one list per vCPU')
        raise r.error("cpu.pin", f"found {show(value)}; expected {expected}", fix)
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise r.error(
                f"cpu.pin[{index}]", f"found {show(item)}; expected a host CPU list string",
                f'quote every entry: pin = {_PIN_EXAMPLE}',
            )
    try:
        return PinSpec.explicit(value)
    except PinListError as exc:
        raise r.error(
            f"cpu.pin[{exc.index}]", f"found {show(value[exc.index])}; {exc.message}",
            exc.fix or f"write pin = {_PIN_EXAMPLE}",
        ) from None


def _emulator(r: Reader, t: Mapping[str, Any], prefix: str, key: str, default: Any) -> Any:
    text = r.string(
        t, "cpu", "emulator", pattern=None,
        expected='"auto" or a host CPU list such as "0-1,8-9"',
        fix='write emulator = "auto" (the CPUs no vCPU uses), or a list such as "0,8"',
    )
    if text is None or text == "auto":
        return EMULATOR_AUTO
    try:
        cpus = parse_cpulist(text, what="cpu.emulator")
    except CpuListError as exc:
        raise r.error(
            "cpu.emulator", f"found {show(text)}; expected \"auto\" or a CPU list ({exc.message})",
            exc.fix or 'write emulator = "auto"',
        ) from None
    if not cpus:
        raise r.error(
            "cpu.emulator", f"found {show(text)}; expected \"auto\" or a non-empty CPU list",
            'write emulator = "auto", or a list such as "0,8"',
        )
    return EmulatorSpec(cpus)


CPU_KEYS: Mapping[str, FieldParser] = {
    "pin": Custom(_pin),
    "emulator": Custom(_emulator),
    "governor": Text(
        _GOVERNOR,
        expected='a cpufreq governor name such as "performance", or "" to leave it alone',
        fix='write governor = "performance" (see scaling_available_governors), or remove it',
    ),
}


def parse_cpu(r: Reader, data: Mapping[str, Any], vm: Vm) -> CpuSection:
    t = r.section(data, "cpu")
    cpu = CpuSection(**r.fields(t, "cpu", CpuSection, CPU_KEYS))
    if cpu.pin.mode is PinMode.EXPLICIT and len(cpu.pin.lists) != vm.cpus:
        count = len(cpu.pin.lists)
        raise r.error(
            "cpu.pin",
            f"found {count} CPU list{'s' if count != 1 else ''}; expected "
            f"one per vCPU (vm.cpus = {vm.cpus})",
            f"give exactly {vm.cpus} lists, one per vCPU in order, or use pin = \"auto\"",
        )
    unpinned = cpu.pin == PIN_NONE
    if unpinned and "emulator" in t:
        raise r.error(
            "cpu.emulator", f"found {show(t['emulator'])} with pin = \"none\"; expected "
            "emulator only with pinned vCPUs", 'set pin = "auto", or remove emulator',
        )
    if unpinned and cpu.isolate:
        raise r.error(
            "cpu.isolate", 'found the boolean true with pin = "none"; expected pinned vCPUs '
            "(isolation keeps host tasks off the vCPUs' CPUs)",
            'set pin = "auto" (or a list), or isolate = false',
        )
    if unpinned and cpu.governor:
        raise r.error(
            "cpu.governor", f"found {show(cpu.governor)} with pin = \"none\"; expected a governor "
            "only for pinned CPUs (it is set on the CPUs the vCPUs run on)",
            'set pin = "auto" (or a list), or remove governor',
        )
    return cpu


# --------------------------------------------------------------------------- [memory]

_HUGEPAGES = {size.label: size for size in HugepageSize}


def _size(mib: int) -> str:
    return f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"


def _hugepages(r: Reader, t: Mapping[str, Any], prefix: str, key: str, default: Any) -> Any:
    if key not in t:
        return default
    value = t[key]
    listed = ", ".join(json.dumps(label) for label in _HUGEPAGES)
    size = _HUGEPAGES.get(value) if isinstance(value, str) else None
    if size is None:
        close = difflib.get_close_matches(str(value).upper(), ["2M", "1G"], n=1, cutoff=0.5)
        fix = (f'did you mean "{close[0]}"? write hugepages = "{close[0]}"' if close
               else f'write hugepages = "2M" (choices: {listed})')
        raise r.error("memory.hugepages", f"found {show(value)}; expected one of {listed}", fix)
    return size


MEMORY_KEYS: Mapping[str, FieldParser] = {"hugepages": Custom(_hugepages)}


def parse_memory_section(r: Reader, data: Mapping[str, Any], vm: Vm) -> MemorySection:
    t = r.section(data, "memory")
    memory = MemorySection(**r.fields(t, "memory", MemorySection, MEMORY_KEYS))
    size = memory.hugepages
    page_mib = size.kib // 1024
    if page_mib and vm.memory_mib % page_mib:
        low = vm.memory_mib // page_mib * page_mib
        sizes = " or ".join(json.dumps(_size(m)) for m in (low, low + page_mib) if m)
        raise r.error(
            "memory.hugepages",
            f"found {show(t['hugepages'])} with vm.memory = {vm.memory_mib} MiB; expected a "
            f"guest RAM that is a whole number of {size.label} pages",
            f"set vm.memory = {sizes}, or use smaller pages",
        )
    return memory
