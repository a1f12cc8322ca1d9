"""The README's commands, read as a new user copies them: the try-it line installs every tool the README
then uses, and the test line installs what CI installs."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
# The Debian package that brings each tool the README has the reader run.
TOOL_PACKAGES = {"getfattr": "attr", "dcmdump": "dcmtk", "fusermount3": "fuse3"}


def apt_packages(command: str) -> set[str]:
    match = re.search(r"apt-get install -y(?: -qq)? ([^&>]+)", command)
    assert match, command
    return set(match.group(1).split())


def command_under(heading: str) -> str:
    section = README.split(f"## {heading}\n", 1)[1]
    return next(line.strip() for line in section.splitlines() if line.startswith("    sudo apt-get"))


def test_the_try_it_line_installs_every_tool_the_readme_uses_before_the_service_section() -> None:
    user_part = README.split("## Run it as a service")[0]
    installed = apt_packages(command_under("Try it in one command (no AWS account)"))
    for tool, package in TOOL_PACKAGES.items():
        if re.search(rf"\b{tool}\b", user_part):
            assert package in installed, f"the README uses {tool} but the try-it line does not install {package}"


def test_the_readme_test_line_installs_what_ci_installs() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    ci_line = next(line for line in ci.splitlines() if "apt-get install" in line)
    assert apt_packages(command_under("Run the tests")) - {"python3-venv"} <= apt_packages(ci_line)


def test_the_nccidfs_installed_beside_this_interpreter_is_on_path_for_the_service_tests() -> None:
    """``.venv/bin/python -m pytest`` (the README's test line) must not skip the tests that run the
    installed command as systemd and mount(8) do."""
    beside = Path(sys.executable).parent / "nccidfs"
    if not beside.exists():
        pytest.skip("nccidfs is not installed beside this interpreter (pip install -e .)")
    assert shutil.which("nccidfs") == str(beside)
