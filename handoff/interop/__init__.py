"""In and out of handoff: libvirt domain XML and KubeVirt manifests. Pure.

- :mod:`.draft`: a profile under construction (section → key → value, with
  comments), rendered as commented TOML.
- :mod:`.domain_import`: libvirt domain XML → a draft and the list of what
  did not map (nothing is dropped silently).
- :mod:`.domain_export`: a Profile → libvirt domain XML that libvirt accepts.
- :mod:`.kubevirt`: a Profile → a KubeVirt ``VirtualMachine`` manifest.
- :mod:`.settings`: the handoff settings libvirt has no element for, carried
  in the domain's ``<metadata>`` so a round trip keeps them.

Never: read files, run virsh, or touch the host (handoff.cli.interop does).
"""
