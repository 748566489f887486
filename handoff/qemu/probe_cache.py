"""A persistent cache of QEMU capability probes, so a CLI start does not pay several QEMU starts.

:func:`handoff.qemu.capabilities.probe` asks the binary nine questions
(``-version``, ``-device help``, ...): a few hundred milliseconds that every
``handoff run`` would pay again. The answers are stored as JSON, one file per
binary, in ``/var/cache/handoff`` (root) or ``$XDG_CACHE_HOME/handoff``
(``~/.cache/handoff``), or in ``$HANDOFF_CACHE_DIR`` when set.

A cached answer is used only when its key matches exactly: the binary's
real path, size, modification time (ns) and inode, handoff's version and
this file's schema. An upgraded QEMU, a touched binary or a new handoff
therefore probes again. A file that is corrupt, partial, of another schema,
not owned by us or writable by others is ignored (logged at debug level) and
rewritten; a cache directory that cannot be written only costs the probe.
Files are written atomically (a temporary file renamed over the old one),
mode 0644.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import handoff


@dataclass(frozen=True)
class QemuCapabilities:
    """The answers of one QEMU binary about itself."""

    binary: Path
    version: tuple[int, int, int]
    devices: frozenset[str]
    accelerators: frozenset[str]
    audio_drivers: frozenset[str]
    display_backends: frozenset[str]
    machines: frozenset[str]
    # Properties of the x86 CPU (the hv-* enlightenments) and of the q35 machine
    # (hpet): what handoff.qemu.hyperv checks each flag against.
    cpu_properties: frozenset[str] = frozenset()
    machine_options: frozenset[str] = frozenset()

    @property
    def version_text(self) -> str:
        return ".".join(str(part) for part in self.version)


log = logging.getLogger(__name__)

#: Bump when what is stored (or how the probe computes it) changes.
SCHEMA = 2

ROOT_CACHE_DIR = Path("/var/cache/handoff")
CACHE_DIR_ENV = "HANDOFF_CACHE_DIR"

class UnusableCacheError(ValueError):
    """A stored document that must not be used (corrupt, foreign or stale)."""


_FROZENSET_FIELDS = (
    "devices", "accelerators", "audio_drivers", "display_backends", "machines",
    "cpu_properties", "machine_options",
)


@dataclass(frozen=True)
class CacheKey:
    """What must be unchanged for a stored probe to still describe the binary."""

    binary: str
    size: int
    mtime_ns: int
    inode: int
    version: str

    @classmethod
    def of(cls, binary: Path) -> CacheKey:
        real = os.path.realpath(binary)
        st = os.stat(real)
        return cls(real, st.st_size, st.st_mtime_ns, st.st_ino, handoff.__version__)


def cache_dir(environ: Mapping[str, str], euid: int) -> Path:
    """Where probe results live for this user (pure)."""
    if environ.get(CACHE_DIR_ENV):
        return Path(environ[CACHE_DIR_ENV])
    if euid == 0:
        return ROOT_CACHE_DIR
    base = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME") or "/") / ".cache")
    return Path(base) / "handoff"


def default_cache_dir() -> Path:
    return cache_dir(os.environ, os.geteuid())


def cache_file(directory: Path, key: CacheKey) -> Path:
    """One file per binary path (the key inside decides whether it is still valid)."""
    digest = hashlib.sha256(key.binary.encode()).hexdigest()[:16]
    return directory / f"qemu-capabilities-{digest}.json"


# --------------------------------------------------------------------------- encoding (pure)


def encode(key: CacheKey, caps: QemuCapabilities) -> dict[str, Any]:
    """The JSON document stored for ``caps``."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(caps):
        value = getattr(caps, f.name)
        if isinstance(value, frozenset):
            value = sorted(value)
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        fields[f.name] = value
    return {"schema": SCHEMA, "key": dataclasses.asdict(key), "capabilities": fields}


def decode(document: object, key: CacheKey) -> QemuCapabilities:
    """The capabilities ``document`` holds for ``key``; UnusableCacheError if unusable."""
    if not isinstance(document, dict):
        raise UnusableCacheError("not a JSON object")
    if document.get("schema") != SCHEMA:
        raise UnusableCacheError(f"schema {document.get('schema')!r}, expected {SCHEMA}")
    if document.get("key") != dataclasses.asdict(key):
        raise UnusableCacheError("stored for another binary, build or handoff version")
    fields = document.get("capabilities")
    expected = {f.name for f in dataclasses.fields(QemuCapabilities)}
    if not isinstance(fields, dict) or set(fields) != expected:
        raise UnusableCacheError("capability fields differ from this handoff's")
    version = fields["version"]
    if not (isinstance(version, list) and len(version) == 3
            and all(isinstance(v, int) for v in version)):
        raise UnusableCacheError("bad version")
    if not isinstance(fields["binary"], str):
        raise UnusableCacheError("bad binary")
    sets: dict[str, frozenset[str]] = {}
    for name in _FROZENSET_FIELDS:
        values = fields[name]
        if not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
            raise UnusableCacheError(f"bad {name}")
        sets[name] = frozenset(values)
    return QemuCapabilities(
        binary=Path(fields["binary"]),
        version=(version[0], version[1], version[2]),
        **sets,
    )


# --------------------------------------------------------------------------- I/O


def load(binary: Path, directory: Path | None = None) -> QemuCapabilities | None:
    """The stored probe of ``binary``, or None (missing, stale, corrupt or untrusted)."""
    directory = default_cache_dir() if directory is None else directory
    try:
        key = CacheKey.of(binary)
        path = cache_file(directory, key)
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                log.debug("ignoring %s: not owned by us or writable by others", path)
                return None
            document = json.loads(f.read())
        return decode(document, key)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("ignoring the probe cache for %s: %s", binary, exc)
        return None


def store(binary: Path, caps: QemuCapabilities, directory: Path | None = None) -> None:
    """Write ``caps`` for ``binary`` atomically; a failure is logged (debug) and ignored."""
    directory = default_cache_dir() if directory is None else directory
    try:
        key = CacheKey.of(binary)
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        data = json.dumps(encode(key, caps), indent=1).encode()
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".probe-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)
                f.write(data)
            os.replace(tmp, cache_file(directory, key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        log.debug("cannot write the probe cache in %s: %s", directory, exc)
