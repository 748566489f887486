"""Single-GPU hosts: the host display handed over with the only GPU, and brought back."""
