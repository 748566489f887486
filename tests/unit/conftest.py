"""Unit tests never write to this machine's system journal (the reset ladder's logger)."""

from __future__ import annotations

import pytest

from handoff.pci import revive


@pytest.fixture(autouse=True)
def no_system_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(revive, "system_log", lambda text, error: None)
