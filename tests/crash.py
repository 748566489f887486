"""A simulated SIGKILL for crash-recovery tests: the N-th call of a method, then nothing."""

from __future__ import annotations

from typing import Any

import pytest


class SimulatedCrash(BaseException):
    """Stands for SIGKILL: raised right after the call it follows; nothing after it runs
    (a BaseException, so no ``except Exception`` cleans up)."""


def crash_after(monkeypatch: pytest.MonkeyPatch, owner: type, method: str, calls: int) -> None:
    """Patch ``owner.method`` so that its ``calls``-th call completes, then crashes."""
    real = getattr(owner, method)
    count = 0

    def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal count
        result = real(self, *args, **kwargs)
        count += 1
        if count == calls:
            raise SimulatedCrash
        return result

    monkeypatch.setattr(owner, method, patched)
