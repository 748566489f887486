"""The kernel's CPU list syntax: what sysfs prints parses back, and a mistake says what it is."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handoff.base.errors import CpuListError
from handoff.tune.cpulist import MAX_CPU, format_cpulist, parse_cpulist


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}),
        ("0-1\n", {0, 1}),  # as read from /sys/devices/system/cpu/online
        ("5", {5}),
        ("", set()),  # /sys/devices/system/cpu/offline with every CPU online
        ("\n", set()),
        (" 2, 8 ", {2, 8}),
        ("3,3,2-3", {2, 3}),
    ],
)
def test_the_kernel_syntax_parses(text: str, cpus: set[int]) -> None:
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize(
    ("cpus", "text"),
    [
        ({0, 1, 2, 3, 8, 10, 11}, "0-3,8,10-11"),
        ({0, 1}, "0-1"),  # a run of two is a range, as the kernel prints it
        ({4}, "4"),
        (set(), ""),
        ({9, 1, 5}, "1,5,9"),
    ],
)
def test_formatting_is_the_kernels_spelling(cpus: set[int], text: str) -> None:
    assert format_cpulist(cpus) == text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("3-1", "the range '3-1' runs backwards (3 > 1)"),
        ("1,,2", "an empty item between commas"),
        ("a", "'a' is not a CPU number or range"),
        ("-1", "'-1' is not a CPU number or range"),
        ("1-", "'1-' is not a CPU number or range"),
        ("0-7:2/4", "uses the group form"),
        ("0-99999", f"CPU 99999 is beyond the largest CPU number Linux supports ({MAX_CPU})"),
        ("٣", "is not a CPU number"),  # a non-ASCII digit int() would accept
    ],
)
def test_a_wrong_list_says_what_is_wrong_and_how_to_write_it(text: str, says: str) -> None:
    with pytest.raises(CpuListError) as caught:
        parse_cpulist(text, what="cpu.emulator")
    assert caught.value.message.startswith(f"cpu.emulator {text!r}: ")
    assert says in caught.value.message
    assert caught.value.fix


def test_a_backwards_range_gets_the_right_spelling_as_fix() -> None:
    with pytest.raises(CpuListError) as caught:
        parse_cpulist("11-8")
    assert caught.value.fix == 'write it low to high: "8-11"'


@given(st.frozensets(st.integers(0, 300), max_size=40))
def test_format_then_parse_is_the_identity(cpus: frozenset[int]) -> None:
    assert parse_cpulist(format_cpulist(cpus)) == cpus


@pytest.mark.parametrize(("lists", "index"), [(["2,8", "x"], 1), (["", "3"], 0)])
def test_a_refused_pin_list_carries_its_index_not_only_in_the_text(
    lists: list[str], index: int
) -> None:
    from handoff.base.errors import PinListError
    from handoff.tune.model import PinSpec

    with pytest.raises(PinListError) as caught:
        PinSpec.explicit(lists)
    assert caught.value.index == index
    assert f"cpu.pin[{index}]" in caught.value.message


def test_a_single_cpu_list_has_no_index() -> None:
    from handoff.base.errors import PinListError

    with pytest.raises(CpuListError) as caught:
        parse_cpulist("1-x", what="cpu.emulator")
    assert not isinstance(caught.value, PinListError)
