"""Tests for nccidfs.derived.agreement: an image is used only when it is the image its twin describes, and
a hostile image is refused before its pixels are decoded."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from nccidfs.derived.agreement import CHECKED, HEADER_SLACK, checked, checked_image, expected
from nccidfs.derived.pixels import read_pixels
from tests import crafted


def ct(**changes: Any) -> tuple[bytes, dict[str, Any]]:
    """A CT image and its twin, the twin then edited: keyword -> new "Value" (None drops the element)."""
    ds = crafted.dataset("CT", 8, 8, "1.2.3", 1)
    twin = crafted.twin(ds)
    for keyword, value in changes.items():
        tag = {"RescaleIntercept": "00281052", "ImagePositionPatient": "00200032", "Rows": "00280010",
               "PixelSpacing": "00280030", "RescaleSlope": "00281053", "BitsAllocated": "00280100"}[keyword]
        if value is None:
            del twin[tag]
        else:
            twin[tag]["Value"] = value
    return crafted.encode(ds), twin


def test_an_image_that_agrees_with_its_twin_is_used_as_it_is() -> None:
    image, twin = ct()
    assert checked(image, expected(twin)) == image
    assert expected(twin).pixels == 64 and expected(twin).pixel_bytes == 128


def test_an_agreeing_image_comes_with_the_dataset_it_was_checked_on_pixels_and_all() -> None:
    image, twin = ct()
    plain, dataset = checked_image(image, expected(twin))
    assert plain == image and dataset.Rows == 8
    assert np.array_equal(read_pixels(plain, dataset)[1], read_pixels(image)[1])


@pytest.mark.parametrize(("keyword", "value", "said"), [
    ("RescaleIntercept", [0], "RescaleIntercept is -1024, its metadata twin says 0"),
    ("RescaleSlope", [2], "RescaleSlope is 1, its metadata twin says 2"),
    ("ImagePositionPatient", [-100, -100, 7.5], "ImagePositionPatient is -100\\-100\\2.5"),
    ("PixelSpacing", [0.75, 0.7], "PixelSpacing is 0.75\\0.75, its metadata twin says 0.75\\0.7"),
    ("Rows", [16], "Rows is 8, its metadata twin says 16"),
    ("RescaleIntercept", None, "RescaleIntercept is -1024, its metadata twin says absent"),
])
def test_an_image_that_differs_from_its_twin_is_refused_naming_the_element(
        keyword: str, value: list[float] | None, said: str) -> None:
    image, twin = ct(**{keyword: value})
    with pytest.raises(ValueError, match="the image's " + said.replace("\\", "\\\\")):
        checked(image, expected(twin))


def test_decimal_strings_and_json_numbers_agree() -> None:
    image, twin = ct(PixelSpacing=[0.75000000001, 0.75])  # a DS of the image read back through a float
    assert checked(image, expected(twin)) == image


def test_a_twin_whose_checked_elements_are_not_numbers_cannot_promise() -> None:
    _, twin = ct(Rows=["many"])
    with pytest.raises(ValueError, match="Rows in its metadata twin is not numbers"):
        expected(twin)
    _, twin = ct(RescaleSlope=[float("nan")])
    with pytest.raises(ValueError, match="not finite"):
        expected(twin)
    assert len(expected({}).values) == len(CHECKED) and expected({}).pixels == 0


def test_a_deflate_bomb_is_refused_after_inflating_only_its_twins_pixels_and_slack() -> None:
    bomb = crafted.deflate_bomb(64 * 1024 * 1024, "1.2.3")
    twin = crafted.twin(bomb)
    twin["00280010"]["Value"] = twin["00280011"]["Value"] = [512]
    with pytest.raises(ValueError, match=f"inflates past {512 * 512 * 2 + HEADER_SLACK} bytes"):
        checked(crafted.encode(bomb), expected(twin))


def test_a_deflated_image_that_agrees_is_used_inflated() -> None:
    ds = crafted.dataset("DX", 16, 16, "1.2.3", 1, DeflatedExplicitVRLittleEndian)
    image = checked(crafted.encode(ds), expected(crafted.twin(ds)))
    assert crafted.dataset("DX", 16, 16, "1.2.3", 1).PixelData in image


def test_bytes_that_are_no_image_are_refused() -> None:
    with pytest.raises(ValueError):
        checked(b"\x00" * 64, expected(ct()[1]))
