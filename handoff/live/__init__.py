"""Live GPU hand-off: a passthrough group moves between host and running guest.

Pure cores: :mod:`.windows` (root-port windows from the BARs in sysfs
``resource``), :mod:`.sequence` (the device_add / device_del order and ids),
:mod:`.state` (one live group's state machine and the journal step each
transition writes first), :mod:`.recovery` (what `handoff recover` does with
a journal a killed supervisor left mid-way). The edge: :mod:`.guest` (QMP:
device_del, DEVICE_DELETED, device_add, query-pci) and :mod:`.resource`
(the session resource composing it with the PCI engine).
"""
