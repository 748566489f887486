"""``[monitor]``: the monitor's input follows keyboard and mouse (or the GPU) over DDC/CI.

:mod:`handoff.monitor.mccs` (the VCP 0x60 input names) and
:mod:`handoff.monitor.plan` (the ddcutil commands, run as hooks handoff owns)
are pure; doctor's look at ddcutil, i2c-dev and the bus is
:mod:`handoff.checks.monitor`.
"""
