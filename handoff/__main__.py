"""``python -m handoff`` is the ``handoff`` command."""

import sys

from handoff.cli import main

sys.exit(main())
