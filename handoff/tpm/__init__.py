"""The guest's TPM 2.0: swtpm run as a session resource.

:mod:`.plan` decides (pure): the commands that create the VM's state and
start swtpm, what an existing state directory means, what swtpm's
capabilities say. :mod:`.resource` does it: it creates the state on first
use, starts swtpm before QEMU with its control socket in QEMU's 0700 socket
directory, and makes sure swtpm is gone after QEMU (see ARCHITECTURE.md,
"TPM").
"""
