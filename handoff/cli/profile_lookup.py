"""Where a profile named on the command line is found: the one lookup cli, doctor and the
shell completions share.

A PROFILE argument is a path (it ends in ``.toml``, contains a ``/`` or
exists), or a bare NAME looked up as ``NAME.toml`` in, in order:

1. ``$HANDOFF_PROFILE_DIR`` (when set and not empty),
2. ``$XDG_CONFIG_HOME/handoff/profiles`` (``~/.config/handoff/profiles``),
3. ``/etc/handoff/profiles``.

:data:`SEARCH_PATH` describes that order as data, so the generated shell
completions search the same directories as :func:`resolve_profile`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from handoff.base.errors import ProfileError

PROFILE_DIR_ENV = "HANDOFF_PROFILE_DIR"
SYSTEM_PROFILE_DIR = "/etc/handoff/profiles"


@dataclass(frozen=True)
class SearchDir:
    """One entry of the search path.

    ``variable``: the environment variable that gives the directory (or its
    base); ``home_default``: the base, relative to $HOME, when the variable is
    unset or empty (None: the entry is skipped then); ``fixed``: a directory
    that needs no variable; ``suffix``: appended to the base.
    """

    variable: str | None = None
    home_default: str | None = None
    fixed: str | None = None
    suffix: str = ""


SEARCH_PATH: tuple[SearchDir, ...] = (
    SearchDir(variable=PROFILE_DIR_ENV),
    SearchDir(variable="XDG_CONFIG_HOME", home_default=".config", suffix="handoff/profiles"),
    SearchDir(fixed=SYSTEM_PROFILE_DIR),
)


def search_dirs(environ: Mapping[str, str]) -> list[Path]:
    """The directories a bare profile name is looked up in, in order (pure)."""
    dirs: list[Path] = []
    for entry in SEARCH_PATH:
        base: Path | None = None
        if entry.fixed is not None:
            base = Path(entry.fixed)
        elif entry.variable is not None and environ.get(entry.variable):
            base = Path(environ[entry.variable])
        elif entry.home_default is not None:
            base = Path(environ.get("HOME") or Path.home()) / entry.home_default
        if base is not None:
            dirs.append(base / entry.suffix if entry.suffix else base)
    return dirs


def is_path_argument(argument: str) -> bool:
    """A PROFILE argument that names a file rather than a profile name (pure)."""
    return argument.endswith(".toml") or "/" in argument


def resolve_profile(argument: str, environ: Mapping[str, str] | None = None) -> Path:
    """A profile argument → its file: a path as given, else NAME.toml in the search dirs.

    Raises :class:`ProfileError` (with the directories searched) when a name
    is found nowhere.
    """
    path = Path(argument)
    if is_path_argument(argument) or path.exists():
        return path
    dirs = search_dirs(os.environ if environ is None else environ)
    for directory in dirs:
        candidate = directory / f"{argument}.toml"
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(d) for d in dirs)
    raise ProfileError(
        f"no profile named {argument!r} (looked for {argument}.toml in {searched})",
        path=argument,
        fix="give the path to the .toml file (handoff run profiles/demo.toml)",
    )
