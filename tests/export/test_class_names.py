"""Class names (``fdpipe.export.class_names``): ambiguous names are refused (issue 19, item 19)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fdpipe.export.class_names import class_indices, read_class_names
from fdpipe.export.request import ModelError


def test_an_ambiguous_class_name_is_refused_with_its_indices() -> None:
    names = ["same", "other", "same", "same"]
    with pytest.raises(ModelError, match=r"'same' is ambiguous: classes 0, 2, 3"):
        class_indices(["same"], names)
    assert class_indices(["other", 2], names) == [1, 2]
    with pytest.raises(ModelError, match="ambiguous"):  # case-folded matches too
        class_indices(["Tabby"], ["tabby", "TABBY"])


def test_duplicates_and_empty_lines_in_a_class_names_file_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("same\nother\n\nsame\n")
    with caplog.at_level(logging.WARNING):
        assert read_class_names(path) == ["same", "other", "", "same"]
    assert "'same' names classes 0, 3" in caplog.text and "class 2 has no name" in caplog.text


def test_an_integral_float_is_an_index() -> None:
    """A label column with gaps is written by pandas as floats ("967.0"): it was refused as an
    unknown class (found by the hostile pass)."""
    names = [f"class{i}" for i in range(1000)]
    assert class_indices(["967.0", "12.00", "3"], names) == [967, 12, 3]
    with pytest.raises(ModelError, match=r"unknown class '967\.5'"):
        class_indices(["967.5"], names)
