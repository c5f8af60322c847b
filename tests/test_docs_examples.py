"""The Python examples of docs/USING_IN_YOUR_PROJECT.md run as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "USING_IN_YOUR_PROJECT.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), flags=re.M | re.S)


def test_doc_has_examples_for_every_section():
    text = "\n".join(BLOCKS)
    assert len(BLOCKS) >= 6
    for used in ("add_ms_rcnn_config", "LazyConfig.load", "MaskScoringMixin", "trace_ms_rcnn",
                 "CascadeMaskScoringROIHeads", "merge_config_file",
                 "mask_scoring_inputs", "add_mask_scoring"):  # fmt: skip
        assert used in text, used


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda i: f"block{i + 1}")
def test_example_runs(index, tmp_path, monkeypatch):
    # Run from a scratch folder that sees the repository's configs/, so the examples' relative
    # paths work and whatever they write lands in tmp_path.
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    code = compile(BLOCKS[index], f"{DOC.name}:block{index + 1}", "exec")
    exec(code, {"__name__": f"doc_example_{index + 1}"})
