"""``python -m handoff`` is the ``handoff`` command."""

import sys

from handoff.cli.main import main

sys.exit(main())
