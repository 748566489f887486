"""Under CI=true a missing host condition fails the test; on a developer's machine it skips."""

from __future__ import annotations

import pytest

PROBE = """
from tests.host_requirements import missing, requires

@requires(False, "no such thing on this host")
def test_marked():
    pass

def test_inside():
    missing("no hugepage pool here")
"""


@pytest.mark.parametrize(
    ("ci", "outcomes"), [("true", {"failed": 1, "errors": 1}), (None, {"skipped": 2})]
)
def test_a_missing_host_condition_skips_only_outside_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None,
    outcomes: dict[str, int],
) -> None:
    from tests.testbed import runner

    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("PYTHONPATH", str(runner.CHECKOUT))
    pytester.makeconftest("from tests.conftest import pytest_runtest_setup  # noqa: F401\n")
    pytester.makeini(
        "[pytest]\nmarkers =\n    ci_missing(reason): fails\n"
    )
    pytester.makepyfile(test_probe=PROBE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(**outcomes)  # a marked test fails at setup: an error
    if ci:
        result.stdout.fnmatch_lines(["*CI=true: no such thing on this host*",
                                     "*CI=true: no hugepage pool here*"])
