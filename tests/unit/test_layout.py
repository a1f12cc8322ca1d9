from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nccidfs.layout import (
    CLINICAL_FILE_NAME,
    CLINICAL_FOLDER,
    IMAGE_FOLDERS,
    KNOWN_FOLDERS,
    image_id,
    is_image,
    is_twin_folder,
    patient_folder,
    twin_folder,
    twin_folder_path,
    twin_name,
    twin_of,
)

segment = st.text(st.characters(exclude_characters="/"), min_size=1, max_size=12)


def test_the_known_folders_are_each_image_folder_with_its_twin_folder_and_the_clinical_one() -> None:
    assert KNOWN_FOLDERS == ("ct", "ct-metadata", "mri", "mri-metadata", "xray", "xray-metadata", "data",
                             "unknown", "unknown-metadata")
    assert set(KNOWN_FOLDERS) == {*IMAGE_FOLDERS, *map(twin_folder, IMAGE_FOLDERS), CLINICAL_FOLDER}
    assert all(is_twin_folder(twin_folder(folder)) and not is_twin_folder(folder) for folder in IMAGE_FOLDERS)


def test_an_image_twin_is_at_the_same_place_in_the_metadata_folder() -> None:
    assert twin_of("ct/Covid1/1.2/1.3/a.dcm") == "ct-metadata/Covid1/1.2/1.3/a.json"
    assert twin_of("/xray/Covid1/1.2/1.3/a.dcm") == "/xray-metadata/Covid1/1.2/1.3/a.json"
    assert twin_name("a.b.dcm") == "a.b.json" and image_id("a.b.dcm") == "a.b"
    assert twin_folder_path("ct/Covid1/1.2/1.3/") == "ct-metadata/Covid1/1.2/1.3/"


def test_there_is_no_twin_outside_an_image_folder() -> None:
    assert twin_of("/a.dcm") is None  # at the top: no folder
    assert twin_of("ct-metadata/Covid1/1.2/1.3/a.dcm") is None
    assert twin_of("ct/Covid1/1.2/1.3/a.json") is None
    assert twin_folder_path("ct/") is None and twin_folder_path("ct-metadata/Covid1/") is None


def test_a_key_lies_in_its_patients_folder() -> None:
    assert patient_folder("ct/Covid1/1.2/1.3/a.dcm") == "ct/Covid1/"
    assert patient_folder("data/Covid1/status_2020-05-01.json") == "data/Covid1/"
    assert patient_folder("ct/Covid1/") == "ct/Covid1/"


def test_clinical_file_names_are_dated_data_or_status_files_in_any_case() -> None:
    assert CLINICAL_FILE_NAME.fullmatch("status_2020-05-01.json")
    assert CLINICAL_FILE_NAME.fullmatch("Data_2020-05-01.json")
    assert not CLINICAL_FILE_NAME.fullmatch("data_2020-5-1.json")
    assert not CLINICAL_FILE_NAME.fullmatch("notes_2020-05-01.json")


@given(folder=st.sampled_from(IMAGE_FOLDERS), middle=st.lists(segment, min_size=1, max_size=4), stem=segment,
       rooted=st.booleans())
def test_twin_of_an_image_round_trips(folder: str, middle: list[str], stem: str, rooted: bool) -> None:
    image = "/" * rooted + "/".join([folder, *middle, stem + ".dcm"])
    twin = twin_of(image)
    assert twin == "/" * rooted + "/".join([twin_folder(folder), *middle, stem + ".json"])
    # Back from the twin: the image folder, the same place, the image's id.
    top, _, rest = twin.removeprefix("/").partition("/")
    assert top.removesuffix("-metadata") == folder
    assert "/" * rooted + f"{folder}/{rest.removesuffix('.json')}.dcm" == image
    assert twin_of(twin) is None


@given(path=st.lists(segment, min_size=1, max_size=6).map("/".join))
def test_twin_of_is_none_outside_image_folders_or_for_non_images(path: str) -> None:
    twin = twin_of(path)
    top = path.split("/", 1)[0]
    if not is_image(path) or is_twin_folder(top) or "/" not in path:
        assert twin is None
    else:
        assert twin is not None and twin.split("/", 1)[0] == twin_folder(top)
