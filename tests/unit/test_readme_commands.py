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


def recover_texts() -> list[str]:
    """`handoff recover`'s description (its --help) and README's row for it."""
    (action,) = [a for a in build_parser()._actions
                 if isinstance(a, argparse._SubParsersAction)]
    row = next(line for line in README.read_text().splitlines()
               if line.startswith("| `handoff recover`"))
    return [action.choices["recover"].description or "", row]


def test_recover_is_described_as_every_recoverer_in_the_order_it_runs_them(
    tmp_path: Path,
) -> None:
    from handoff.session.recovery import recoverers
    from tests.unit.fakesysfs import seed_machine

    host = seed_machine(tmp_path)
    names = [r.name for r in recoverers(host.paths, host)]  # built, never run
    for text in recover_texts():
        at = [text.find(name) for name in names]
        assert -1 not in at, (names, text)
        assert at == sorted(at), (names, text)
