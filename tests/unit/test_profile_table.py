"""The profile parser's key table: every key has one parser, derived from the model.

handoff.profile.parse reads each section through handoff.profile.reader's
:meth:`Reader.fields`: a bool or enum field is read by its declared type and
default, every other key by its entry in the section's table (which carries
the error text). These tests hold that contract: the tables name only keys
the model declares, every field of every section has a parser, a field left
out of a table is a programming error (not a silent default), and a new
section written the documented way gets the same checked reads and errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path

import pytest

from handoff.base.errors import ProfileError
from handoff.profile.model import SECTION_KEYS, SECTIONS, field_default, toml_name
from handoff.profile.parse import KEY_TABLES
from handoff.profile.reader import FieldParser, Item, Reader, Text, Texts, derived_parser, matches

SOURCE = Path("/etc/handoff/test.toml")


def test_every_section_has_a_key_table_naming_only_its_own_keys() -> None:
    assert set(KEY_TABLES) == {section.name for section in SECTIONS}
    for name, table in KEY_TABLES.items():
        assert set(table) <= set(SECTION_KEYS[name]), name


def test_every_field_of_every_section_has_exactly_one_parser() -> None:
    for section in SECTIONS:
        table = KEY_TABLES[section.name]
        for f in fields(section.kind):
            key = toml_name(f)
            derived = derived_parser(field_default(f))
            assert (key in table) or derived is not None, f"{section.name}.{key} has no parser"


class Colour(Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Lamp:
    """A section a later module could add: a bool, an enum and a checked string."""

    on: bool = False
    colour: Colour = Colour.RED
    label: str = "lamp"
    tags: tuple[str, ...] = ()


LAMP_KEYS: Mapping[str, FieldParser] = {
    "label": Text(re.compile(r"^[a-z]+$"), expected="lower-case letters", fix='write label = "a"'),
    "tags": Texts(
        "tag strings", '["a"]', Item(matches(re.compile(r"^[a-z]+$")), "a tag", "write a tag"),
    ),
}


def read_lamp(data: dict[str, object]) -> Lamp:
    reader = Reader(SOURCE)
    return Lamp(**reader.fields(data, "lamp", Lamp, LAMP_KEYS))


def test_a_new_section_reads_its_fields_from_the_model_and_its_table() -> None:
    assert read_lamp({}) == Lamp()
    assert read_lamp({"on": True, "colour": "blue", "label": "desk", "tags": ["x"]}) == Lamp(
        True, Colour.BLUE, "desk", ("x",)
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"on": "yes"}, 'lamp.on: found the string "yes"; expected true or false'),
        ({"colour": "bleu"}, 'lamp.colour: found the string "bleu"; expected one of "red", "blue"'),
        ({"label": "Desk"}, 'lamp.label: found the string "Desk"; expected lower-case letters'),
        ({"tags": ["ok", "No"]}, 'lamp.tags[1]: found the string "No"; expected a tag'),
    ],
)
def test_a_new_section_refuses_bad_values_with_the_key_path(
    data: dict[str, object], message: str
) -> None:
    with pytest.raises(ProfileError) as caught:
        read_lamp(data)
    assert str(caught.value).startswith(f"{SOURCE}: {message}")


def test_a_field_with_no_parser_is_a_programming_error_not_a_default() -> None:
    reader = Reader(SOURCE)
    with pytest.raises(TypeError, match=r"Lamp\.label: no parser"):
        reader.fields({}, "lamp", Lamp, {})
