"""README's command table lists every subcommand the parser has."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from handoff.cli.main import build_parser

README = Path(__file__).resolve().parents[2] / "README.md"


def subcommands() -> list[str]:
    (action,) = [a for a in build_parser()._actions
                 if isinstance(a, argparse._SubParsersAction)]
    return list(action.choices)


def test_the_readme_command_table_names_every_subcommand() -> None:
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `handoff ")]
    named = {word for row in rows for word in re.findall(r"`handoff (\w+)|`(\w+) ADDR", row)
             for word in word if word}
    assert sorted(set(subcommands()) - named) == []
