"""Reading a libvirt domain element by element, keeping count of what was used. Pure.

:class:`DomainReader` is the importer's base: every element and attribute it
touches is recorded, so what is left at the end is exactly what did not map
(:mod:`handoff.interop.domain_import` lists it, each with a reason).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from handoff.base.errors import DomainImportError
from handoff.interop.draft import Draft

#: libvirt's namespace for ``<qemu:commandline>`` and ``<qemu:override>``.
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


@dataclass(frozen=True)
class Unmapped:
    """One element or attribute of the domain that has no place in the profile."""

    where: str  # devices/disk[2]/driver/@discard='unmap', or devices/rng
    reason: str

    def line(self) -> str:
        return f"{self.where}: {self.reason}"


def local(tag: str) -> str:
    """``{namespace}tag`` → ``qemu:tag`` for libvirt's QEMU namespace, else the tag."""
    if tag.startswith("{"):
        namespace, _, name = tag[1:].partition("}")
        return f"qemu:{name}" if namespace == QEMU_NS else f"{{{namespace}}}{name}"
    return tag


@dataclass
class _Seen:
    """Which elements and attributes the mapping used."""

    elements: set[int] = field(default_factory=set)
    attributes: set[tuple[int, str]] = field(default_factory=set)
    notes: list[Unmapped] = field(default_factory=list)

    def use(self, element: ET.Element, *attributes: str) -> ET.Element:
        self.elements.add(id(element))
        for name in attributes:
            self.attributes.add((id(element), name))
        return element

    def use_tree(self, element: ET.Element) -> None:
        for node in element.iter():
            self.elements.add(id(node))
            for name in node.attrib:
                self.attributes.add((id(node), name))

    def note(self, where: str, reason: str) -> None:
        self.notes.append(Unmapped(where, reason))


class DomainReader:
    """One domain being read: its elements, what was used of them, the draft being filled."""

    def __init__(self, root: ET.Element, source: str) -> None:
        self.root = root
        self.source = source
        self.seen = _Seen()
        self.draft = Draft()
        self.paths = element_paths(root)

    # ------------------------------------------------------------------ helpers

    def error(self, message: str, fix: str) -> DomainImportError:
        return DomainImportError(f"{self.source}: {message}", fix=fix)

    def find(self, parent: ET.Element, path: str) -> ET.Element | None:
        found = parent.find(path, {"qemu": QEMU_NS})
        if found is not None:
            self.seen.use(found)
        return found

    def findall(self, parent: ET.Element, path: str) -> list[ET.Element]:
        found = parent.findall(path, {"qemu": QEMU_NS})
        for element in found:
            self.seen.use(element)
        return found

    def attr(self, element: ET.Element, name: str, default: str | None = None) -> str | None:
        if name in element.attrib:
            self.seen.use(element, name)
            return element.attrib[name]
        return default

    def default_attr(self, element: ET.Element, name: str, *defaults: str) -> None:
        """An attribute whose value says nothing new when it is one of ``defaults``."""
        if element.attrib.get(name) in defaults:
            self.seen.use(element, name)

    def where(self, element: ET.Element, attribute: str | None = None) -> str:
        path = self.paths[id(element)]
        if attribute is None:
            return path
        return f"{path}/@{attribute}={element.attrib[attribute]!r}"

    def text(self, element: ET.Element) -> str:
        return (element.text or "").strip()

def element_paths(root: ET.Element) -> dict[int, str]:
    """``devices/disk[2]/driver`` for every element (index only among same-tag siblings)."""
    paths: dict[int, str] = {id(root): "domain"}

    def visit(element: ET.Element, prefix: str) -> None:
        counts: dict[str, int] = {}
        for child in element:
            counts[child.tag] = counts.get(child.tag, 0) + 1
        seen: dict[str, int] = {}
        for child in element:
            tag = local(child.tag) if isinstance(child.tag, str) else "?"
            seen[child.tag] = seen.get(child.tag, 0) + 1
            label = f"{tag}[{seen[child.tag]}]" if counts[child.tag] > 1 else tag
            path = f"{prefix}/{label}" if prefix else label
            paths[id(child)] = path
            visit(child, path)

    visit(root, "")
    return paths
