from pathlib import Path

import pytest

from lens_pipeline.capture.prompts import PromptFileError, read_prompts


def test_jsonl_bad_lines_are_reported_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "good one", "id": 7}\nnot json\n{"id": 3}\n{"text": "  "}\n\n["a list"]\n{"text": "good two"}\n')
    prompts, errors = read_prompts(path)
    assert [p.text for p in prompts] == ["good one", "good two"]
    assert prompts[0].metadata == {"id": 7}
    assert prompts[0].source == f"{path}:1"
    by_line = {str(e).split(":")[1]: e.message for e in errors}
    assert set(by_line) == {"2", "3", "4", "5", "6"}
    assert "not valid JSON" in by_line["2"]
    assert "text" in by_line["3"]
    assert "empty" in by_line["4"]


def test_plain_text_is_one_prompt_per_line(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("first prompt\n\nsecond {not json}\n")
    prompts, errors = read_prompts(path)
    assert [p.text for p in prompts] == ["first prompt", "second {not json}"]
    assert errors == []


def test_missing_and_empty_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(PromptFileError, match="no such prompt file"):
        read_prompts(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(PromptFileError, match="no usable prompts"):
        read_prompts(tmp_path / "empty.jsonl")


def test_shipped_data_parses_cleanly() -> None:
    root = Path(__file__).resolve().parents[1] / "data"
    for name in ("prompts.jsonl", "small.jsonl", "shakespeare_quotes.jsonl"):
        prompts, errors = read_prompts(root / name)
        assert errors == [] and len(prompts) >= 6, name
    assert len(read_prompts(root / "prompts.jsonl")[0]) >= 300
