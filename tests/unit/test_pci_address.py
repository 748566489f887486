"""PCI addresses are accepted in lspci's and sysfs's forms, and nothing else."""

import pytest

from handoff.base.errors import PciAddressError
from handoff.pci.address import PciAddress


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("01:00.0", "0000:01:00.0"),
        ("0000:01:00.1", "0000:01:00.1"),
        ("0000:00:1F.3", "0000:00:1f.3"),
        (" 00:06.1 ", "0000:00:06.1"),
        ("000a:ff:1f.7", "000a:ff:1f.7"),
    ],
)
def test_accepts_lspci_and_sysfs_forms(text: str, normalised: str) -> None:
    assert str(PciAddress.parse(text)) == normalised


@pytest.mark.parametrize(
    "text", ["", "1:00.0", "01:00", "01:00.8", "01:20.0", "0000:01:00.0.0", "gpu", "01-00.0"]
)
def test_refuses_anything_else_with_a_fix(text: str) -> None:
    with pytest.raises(PciAddressError) as caught:
        PciAddress.parse(text)
    assert caught.value.fix is not None
    assert "01:00.0" in caught.value.fix or "00 to 1f" in caught.value.fix


def test_short_form_drops_domain_zero_only() -> None:
    assert PciAddress.parse("0000:01:00.0").short == "01:00.0"
    assert PciAddress.parse("0001:01:00.0").short == "0001:01:00.0"


def test_functions_of_one_card_share_a_slot_address() -> None:
    gpu, audio = PciAddress.parse("01:00.0"), PciAddress.parse("01:00.1")
    assert gpu.slot_address == audio.slot_address == "0000:01:00"
    assert gpu < audio
