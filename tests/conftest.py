"""Shared pytest set-up: see tests/README.md for the three layers of tests.

The testbed plugin batches every selected ``realkernel`` test into one boot of
the real-kernel VM and relays the guest's results into this run; pytester lets
the testbed's own host-side tests run inner pytest sessions.

Hypothesis: properties never time their examples (``deadline=None``: CI runs on
two busy shared cores, where a fast example can take seconds) and their
generators produce mostly valid data, so no health check needs silencing. With
``CI`` set the profile "ci" is loaded: derandomized (every CI run tests the same
examples, so a red run is reproducible and never a lucky draw) and without the
example database. Elsewhere "dev": random examples, the database replays
failures. ``pytest --hypothesis-profile=ci`` reproduces CI locally.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# pytester (inner pytest runs for the testbed's host-side tests) is not needed
# in the guest, where every import costs 12-15x.
pytest_plugins = ["tests.testbed.plugin"]
if os.environ.get("TESTBED") != "1":
    pytest_plugins.append("pytester")
