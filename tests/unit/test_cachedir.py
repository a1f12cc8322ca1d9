from __future__ import annotations

from pathlib import Path

import pytest

from nccidfs.cachedir import COHORTS_FOLDER, MARKER, PACKED_FOLDER, is_cache_dir, prepare
from nccidfs.errors import ConfigError


def test_a_new_cache_dir_holding_cohort_manifests_put_there_by_hand_is_accepted(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    (directory / COHORTS_FOLDER).mkdir(parents=True, mode=0o700)
    (directory / COHORTS_FOLDER / "trial.csv").write_text("key,size,etag\n")
    (directory / PACKED_FOLDER).mkdir(mode=0o700)
    directory.chmod(0o700)
    assert prepare(directory) == directory.resolve()
    assert is_cache_dir(directory) and (directory / COHORTS_FOLDER / "trial.csv").exists()


def test_a_directory_holding_anything_else_is_refused_unmarked(tmp_path: Path) -> None:
    directory = tmp_path / "project"
    (directory / COHORTS_FOLDER).mkdir(parents=True, mode=0o700)
    (directory / "thesis.tex").write_text("precious")
    directory.chmod(0o700)
    with pytest.raises(ConfigError, match="thesis.tex"):
        prepare(directory)
    assert not (directory / MARKER).exists()
