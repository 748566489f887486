"""Tests that depend on the host: a skip on a developer's machine, a failure in CI.

A test that needs QEMU, root, a hugepage pool or an installed tool skips with
the reason where the host lacks it; with ``CI=true`` (the project's CI host
provides every one of them, contrib/install.sh --dev installs the tools) the
same missing condition fails the test instead, so a CI run can never go green
by skipping what it was meant to prove.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

#: The marker :func:`requires` puts on a test whose condition CI lacks (tests/conftest.py fails it).
CI_MISSING = "ci_missing"


def in_ci() -> bool:
    """``CI`` set (CI services set ``CI=true``), as the testbed plugin reads it."""
    return os.environ.get("CI", "") not in ("", "0", "false")


def requires(condition: bool, reason: str) -> pytest.MarkDecorator:
    """``skipif(not condition)`` on a developer's machine; under CI=true a failure."""
    if condition or not in_ci():
        return pytest.mark.skipif(not condition, reason=reason)
    mark: pytest.MarkDecorator = getattr(pytest.mark, CI_MISSING)(reason)
    return mark


def missing(reason: str) -> NoReturn:
    """Inside a test or fixture: skip, or under CI=true fail, saying what the host lacks."""
    if in_ci():
        pytest.fail(f"CI=true: {reason} (this host must provide it; it is never skipped in CI)",
                    pytrace=False)
    pytest.skip(reason)


def is_root() -> bool:
    return os.geteuid() == 0
