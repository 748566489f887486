"""Where the capability probe cache lives (pure: an environment mapping and a uid)."""

from __future__ import annotations

from pathlib import Path

from handoff.qemu.probe_cache import cache_dir


def test_root_uses_var_cache() -> None:
    assert cache_dir({"HOME": "/root", "XDG_CACHE_HOME": "/x"}, 0) == Path("/var/cache/handoff")


def test_a_user_uses_xdg_cache_home_else_dot_cache() -> None:
    assert cache_dir({"HOME": "/home/a", "XDG_CACHE_HOME": "/xdg"}, 1000) == Path("/xdg/handoff")
    assert cache_dir({"HOME": "/home/a"}, 1000) == Path("/home/a/.cache/handoff")
    assert cache_dir({"HOME": "/home/a", "XDG_CACHE_HOME": ""}, 1000) == Path(
        "/home/a/.cache/handoff"
    )


def test_handoff_cache_dir_overrides_both() -> None:
    env = {"HOME": "/home/a", "HANDOFF_CACHE_DIR": "/tmp/c"}
    assert cache_dir(env, 0) == Path("/tmp/c")
    assert cache_dir(env, 1000) == Path("/tmp/c")
