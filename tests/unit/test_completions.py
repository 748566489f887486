"""Completions and the man page, generated from argparse: they parse, they complete,
and the checked-in copies in contrib/ are what the real CLI generates today."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from handoff import __version__
from handoff.cli.profile_lookup import SEARCH_PATH
from tests.host_requirements import requires
from tools.completions import (
    OUTPUTS,
    PROFILE_DIRS,
    Kind,
    handoff_cli,
    read_parser,
    render_all,
    render_man,
)
from tools.completions import main as completions_main

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"


def small_parser() -> argparse.ArgumentParser:
    """A parser shaped like handoff's, with every kind of argument the generator knows."""
    p = argparse.ArgumentParser(prog="handoff", description="Run a VM: test parser.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more [log] output: yes")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="run a VM", description="Run it.")
    run.add_argument("profile", metavar="PROFILE", help="profile file or name")
    run.add_argument("--qemu", metavar="BINARY", default="qemu", help="QEMU (default: %(default)s)")
    run.add_argument("--trace", metavar="FILE", type=Path, help="trace file")
    run.add_argument("--dry-run", action="store_true", help="don't run it")
    switch = sub.add_parser("switch", help="move input")
    switch.add_argument("profile", metavar="PROFILE")
    switch.add_argument("to", nargs="?", choices=("host", "guest"), help="where input goes")
    detach = sub.add_parser("detach", help="detach devices")
    detach.add_argument("addresses", nargs="+", metavar="ADDRESS", help="PCI address")
    detach.add_argument("--allow", action="append", metavar="ADDRESS", help="co-member")
    return p


@pytest.fixture
def generated(tmp_path: Path) -> dict[str, Path]:
    files = render_all(read_parser(small_parser()), "1.2.3")
    out: dict[str, Path] = {}
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        out[rel] = path
    return out


def test_the_model_reads_commands_options_and_value_kinds() -> None:
    cli = read_parser(small_parser())
    assert [c.name for c in cli.commands] == ["run", "switch", "detach"]
    run, switch, detach = cli.commands
    kinds = {o.flags[0]: o.kind for o in run.options}
    assert kinds == {
        "-h": Kind.NONE,
        "--qemu": Kind.COMMAND,
        "--trace": Kind.FILE,
        "--dry-run": Kind.NONE,
    }
    assert run.positionals[0].kind is Kind.PROFILE
    assert switch.positionals[1].choices == ("host", "guest")
    assert switch.positionals[1].optional
    assert detach.positionals[0].repeats
    assert detach.positionals[0].kind is Kind.ADDRESS
    assert next(o for o in detach.options if o.flags == ("--allow",)).repeatable
    assert next(o for o in run.options if o.flags == ("--qemu",)).help == "QEMU (default: qemu)"


# ---------------------------------------------------------------- bash


def bash_complete(
    script: Path, words: list[str], cwd: Path, env: dict[str, str] | None = None
) -> list[str]:
    """Run the completion function in a real bash as readline would, return COMPREPLY."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    program = (
        f"source '{script}'; COMP_WORDS=({quoted}); COMP_CWORD=$(({len(words)} - 1)); "
        'COMPREPLY=(); _handoff; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "HOME": str(cwd), "XDG_CONFIG_HOME": str(cwd / "config"), **(env or {})},
        check=True,
    )
    return sorted(line for line in result.stdout.splitlines() if line)


def test_bash_script_parses(generated: dict[str, Path]) -> None:
    subprocess.run(["bash", "-n", str(generated["completions/handoff.bash"])], check=True)


def test_bash_completes_subcommands_options_profiles_and_choices(
    generated: dict[str, Path], tmp_path: Path
) -> None:
    script = generated["completions/handoff.bash"]
    (tmp_path / "win10.toml").write_text("")
    (tmp_path / "notes.txt").write_text("")
    named = tmp_path / "config" / "handoff" / "profiles"
    named.mkdir(parents=True)
    (named / "gaming.toml").write_text("")
    assert bash_complete(script, ["handoff", ""], tmp_path) == [
        "--help",
        "--verbose",
        "-h",
        "-v",
        "detach",
        "run",
        "switch",
    ]
    assert bash_complete(script, ["handoff", "sw"], tmp_path) == ["switch"]
    assert bash_complete(script, ["handoff", "run", "--d"], tmp_path) == ["--dry-run"]
    assert "win10.toml" in bash_complete(script, ["handoff", "run", ""], tmp_path)
    assert "notes.txt" not in bash_complete(script, ["handoff", "run", ""], tmp_path)
    assert "gaming" in bash_complete(script, ["handoff", "-v", "run", "ga"], tmp_path)
    assert bash_complete(script, ["handoff", "switch", "win10", ""], tmp_path) == ["guest", "host"]
    # the value of --qemu is not counted as the PROFILE positional
    assert "win10.toml" in bash_complete(script, ["handoff", "run", "--qemu", "q", "w"], tmp_path)


# ---------------------------------------------------------------- zsh and fish

needs_zsh = requires(shutil.which("zsh") is not None, "zsh is not installed")
needs_fish = requires(shutil.which("fish") is not None, "fish is not installed")


# A real interactive zsh in a pseudo-terminal (zsh/zpty): compinit with the script
# under test first in $fpath, compadd wrapped to log every match to a file, then a
# key bound to complete-word followed by a marker. Each step waits for its marker
# before the next keys are typed (zsh's completion skips work while typeahead is
# pending), so nothing waits on a timer and nothing races.
ZSH_HARNESS = r"""
zmodload zsh/zpty || exit 3
fpath_dir=$1 hits=$2; shift 2
zpty z zsh -f -i
zpty -w z "fpath=($fpath_dir \$fpath); autoload -U compinit; compinit -u -D; print -r -- 'S''TEP1'"
zpty -r -m z line '*STEP1*' || exit 4
zpty -w z 'compadd () {
  if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return $?; fi
  typeset -a __hits; builtin compadd -A __hits "$@"; (( $#__hits )) || return 1
  print -r -l -- ${^__hits} >> '$hits'; builtin compadd "$@"
}
tcomp() { zle complete-word; print -rn -- $'"'"'\nCMP'"'"'DONE'"'"'\n'"'"' > /dev/tty }
zle -N tcomp; bindkey "^T" tcomp; print -r -- "S""TEP2"'
zpty -r -m z line '*STEP2*' || exit 5
for cmdline in "$@"; do
  print -r -- "@@" >> $hits
  zpty -w -n z "$cmdline"$'\C-t'
  zpty -r -m z line '*CMPDONE*' || exit 6
  zpty -w -n z $'\C-u'
  zpty -w z "print -r -- 'D''ONE'"
  zpty -r -m z line '*DONE*' || exit 7
done
zpty -d z
"""


def zsh_complete(
    script: Path, lines: list[str], cwd: Path, env: dict[str, str] | None = None
) -> list[list[str]]:
    """For each line, the matches zsh's completion system offers for it + TAB."""
    fpath = cwd / "fpath"
    fpath.mkdir(exist_ok=True)
    shutil.copyfile(script, fpath / "_handoff")
    harness = cwd / "harness.zsh"
    harness.write_text(ZSH_HARNESS)
    hits = cwd / "hits"
    hits.write_text("")
    subprocess.run(
        ["zsh", "-f", str(harness), str(fpath), str(hits), *lines],
        cwd=cwd,
        env={**os.environ, "HOME": str(cwd), "XDG_CONFIG_HOME": str(cwd / "config"), **(env or {})},
        timeout=60,
        check=True,
    )
    blocks = hits.read_text().split("@@\n")[1:]
    return [sorted(set(block.split())) for block in blocks]


@needs_zsh
def test_zsh_script_parses(generated: dict[str, Path]) -> None:
    subprocess.run(["zsh", "-n", str(generated["completions/_handoff"])], check=True)


def test_zsh_specs_escape_brackets_and_colons_in_help(generated: dict[str, Path]) -> None:
    text = generated["completions/_handoff"].read_text()
    assert text.startswith("#compdef handoff\n")
    assert r"more \[log\] output\: yes" in text
    assert "'1:PROFILE:_handoff_profiles'" in text
    assert "'*:ADDRESS:_handoff_addresses'" in text
    assert "'2::TO:(host guest)'" in text


@needs_zsh
def test_zsh_completes_subcommands_positionals_and_options(
    generated: dict[str, Path], tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "win10.toml").write_text("")
    script = generated["completions/_handoff"]
    lines = [
        "handoff ",
        "handoff sw",
        "handoff run ",
        "handoff switch win10 ",
        "handoff run --dr",
    ]
    commands, prefix, profiles, choices, option = zsh_complete(script, lines, work)
    assert commands == ["detach", "run", "switch"]
    assert prefix == ["switch"]
    assert "win10.toml" in profiles
    assert choices == ["guest", "host"]
    assert option == ["--dry-run"]


@needs_fish
def test_fish_script_parses(generated: dict[str, Path]) -> None:
    subprocess.run(["fish", "-n", str(generated["completions/handoff.fish"])], check=True)


@needs_fish
def test_fish_completes_by_position(generated: dict[str, Path], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "win10.toml").write_text("")
    script = generated["completions/handoff.fish"]

    def complete(line: str) -> list[str]:
        out = subprocess.run(
            ["fish", "--no-config", "-c", f"source '{script}'; complete -C '{line}'"],
            capture_output=True,
            text=True,
            cwd=work,
            check=True,
        ).stdout
        return sorted(row.split("\t")[0] for row in out.splitlines())

    assert {"run", "switch", "detach"} <= set(complete("handoff "))
    assert complete("handoff switch ") == ["win10.toml"]
    assert complete("handoff switch win10 ") == ["guest", "host"]
    assert complete("handoff run --d") == ["--dry-run"]


# ---------------------------------------------------------------- man page


def groff_warnings(page: Path) -> str:
    result = subprocess.run(
        ["groff", "-man", "-ww", "-z", "-Tutf8", str(page)], capture_output=True, text=True
    )
    return result.stderr + ("" if result.returncode == 0 else f"exit {result.returncode}")


@requires(shutil.which("groff") is not None, "groff is not installed")
def test_man_page_renders_without_warnings(generated: dict[str, Path]) -> None:
    assert groff_warnings(generated["man/handoff.1"]) == ""


def test_man_page_has_every_command_with_its_synopsis_and_options() -> None:
    page = render_man(read_parser(small_parser()), "1.2.3")
    assert '.TH HANDOFF 1 "" "handoff 1.2.3" "User Commands"' in page
    assert r"\fBhandoff run\fR [\fB\-\-qemu\fR \fIBINARY\fR]" in page
    assert r"{host|guest}" in page
    assert r"\fIADDRESS\fR..." in page
    assert ".SH EXIT STATUS" in page


# ---------------------------------------------------------------- the real CLI


@pytest.fixture(scope="module")
def real() -> dict[str, str]:
    return render_all(handoff_cli(), __version__)


def test_checked_in_files_are_what_the_cli_generates_today(real: dict[str, str]) -> None:
    stale = [rel for rel, text in real.items() if (CONTRIB / rel).read_text() != text]
    assert stale == [], "regenerate with: python -m tools.completions --write contrib/"


def test_every_generated_file_says_where_it_goes(real: dict[str, str]) -> None:
    assert set(real) == set(OUTPUTS)
    for rel, text in real.items():
        head = "\n".join(text.splitlines()[:4])
        assert "Goes to" in head, rel


def test_every_subcommand_is_in_every_completion_and_the_man_page(real: dict[str, str]) -> None:
    names = [c.name for c in handoff_cli().commands]
    assert {"run", "doctor", "recover", "groups", "switch"} <= set(names)
    for rel, text in real.items():
        for name in names:
            if rel.startswith("man/"):
                assert rf"\fBhandoff {name}\fR" in text, (rel, name)
            else:
                assert name in text, (rel, name)


def test_the_doctor_options_reach_the_completions(real: dict[str, str]) -> None:
    doctor = next(c for c in handoff_cli().commands if c.name == "doctor")
    assert {f for o in doctor.options for f in o.flags} >= {"--json", "--qemu"}
    assert doctor.positionals[0].kind is Kind.PROFILE
    assert "-l json" in real["completions/handoff.fish"]


def test_the_real_bash_completion_offers_every_subcommand(tmp_path: Path) -> None:
    script = CONTRIB / "completions" / "handoff.bash"
    offered = bash_complete(script, ["handoff", ""], tmp_path)
    assert set(c.name for c in handoff_cli().commands) <= set(offered)


@requires(shutil.which("groff") is not None, "groff is not installed")
def test_the_real_man_page_renders_without_warnings() -> None:
    assert groff_warnings(CONTRIB / "man" / "handoff.1") == ""


def test_the_regeneration_command_writes_every_file(
    tmp_path: Path, real: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert completions_main(["--write", str(tmp_path)]) == 0
    for rel, text in real.items():
        assert (tmp_path / rel).read_text() == text
    assert capsys.readouterr().out.count("wrote ") == len(real)


@needs_zsh
def test_the_real_zsh_completion_offers_every_subcommand(tmp_path: Path) -> None:
    script = CONTRIB / "completions" / "_handoff"
    (offered,) = zsh_complete(script, ["handoff "], tmp_path)
    assert {c.name for c in handoff_cli().commands} <= set(offered)


# ---------------------------------------------------------------- profile names: one search path


@pytest.fixture
def profile_dirs(tmp_path: Path) -> dict[str, str]:
    """A profile in $HANDOFF_PROFILE_DIR, one in $XDG_CONFIG_HOME/handoff/profiles."""
    env_dir = tmp_path / "from-env"
    env_dir.mkdir()
    (env_dir / "envvm.toml").write_text("")
    config = tmp_path / "work" / "config" / "handoff" / "profiles"
    config.mkdir(parents=True)
    (config / "cfgvm.toml").write_text("")
    return {"HANDOFF_PROFILE_DIR": str(env_dir)}


def test_bash_offers_names_from_handoff_profile_dir_like_the_cli(
    generated: dict[str, Path], tmp_path: Path, profile_dirs: dict[str, str]
) -> None:
    work = tmp_path / "work"
    names = bash_complete(generated["completions/handoff.bash"], ["handoff", "run", ""], work,
                          profile_dirs)
    assert {"envvm", "cfgvm"} <= set(names)
    # unset: only the other directories (not the file system root)
    names = bash_complete(generated["completions/handoff.bash"], ["handoff", "run", ""], work)
    assert "cfgvm" in names
    assert "envvm" not in names


@needs_zsh
def test_zsh_offers_names_from_handoff_profile_dir_like_the_cli(
    generated: dict[str, Path], tmp_path: Path, profile_dirs: dict[str, str]
) -> None:
    (offered,) = zsh_complete(generated["completions/_handoff"], ["handoff run "],
                              tmp_path / "work", profile_dirs)
    assert {"envvm", "cfgvm"} <= set(offered)


@needs_fish
def test_fish_offers_names_from_handoff_profile_dir_like_the_cli(
    generated: dict[str, Path], tmp_path: Path, profile_dirs: dict[str, str]
) -> None:
    work = tmp_path / "work"
    out = subprocess.run(
        ["fish", "--no-config", "-c",
         f"source '{generated['completions/handoff.fish']}'; complete -C 'handoff run '"],
        capture_output=True, text=True, cwd=work, check=True,
        env={**os.environ, "HOME": str(work), "XDG_CONFIG_HOME": str(work / "config"),
             **profile_dirs},
    ).stdout
    assert {"envvm", "cfgvm"} <= {row.split("\t")[0] for row in out.splitlines()}


def test_the_completions_search_the_directories_of_handoff_profile_lookup() -> None:
    assert len(PROFILE_DIRS) == len(SEARCH_PATH)
    assert PROFILE_DIRS[0] == '"${HANDOFF_PROFILE_DIR}"'
