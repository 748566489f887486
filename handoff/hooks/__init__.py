"""``[[hook]]``: programs run on a switch, a live GPU move, the VM's start and stop.

:mod:`handoff.hooks.plan` decides (which hooks, their environment, what a
run's end means); :mod:`handoff.hooks.runner` runs them beside the session.
"""
