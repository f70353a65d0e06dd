"""The docs state what the code defines. README.md is the guide; docs/*.md hold the reference.

A test fails when a figure, a model source, a cache array or a command-line flag is added without
being documented, when the cache table in docs/cache.md drifts from the code, when a markdown
table has a row that does not fit its header (a row of another table pasted in), when the
built-in figure table's cells do not mean what its header says, or when a relative link points at
no file or heading."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from lens_pipeline.capture import models
from lens_pipeline.draw.registry import REGISTRY, SCOPES
from lens_pipeline.figures import load_builtins
from lens_pipeline.store.cache import arrays_markdown

REPO = Path(__file__).resolve().parents[1]
README_PATH = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README_PATH, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 250


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def all_text() -> str:
    return "\n".join(text(page) for page in PAGES)


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# --- Markdown, as GitHub reads it -------------------------------------------------------------

FENCE = re.compile(r"^\s*(```|~~~)")
DELIMITER_ROW = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")


def prose_lines(markdown: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(markdown.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def code_blocks(markdown: str) -> list[str]:
    """The contents of every fenced code block."""
    blocks, current = [], None
    for line in markdown.splitlines():
        if FENCE.match(line):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def code_spans(markdown: str) -> list[str]:
    """The contents of every inline code span outside fenced blocks (`...`, ``...``)."""
    prose = "\n".join(line for _, line in prose_lines(markdown))
    return [m.group(2) for m in re.finditer(r"(`+)(.+?)\1", prose)]


def split_row(line: str) -> list[str]:
    """A table row's cells as GitHub splits them: on every `|` not escaped as `\\|`. A `|` inside
    backticks still splits a cell there (GFM), so it must be written `\\|` too."""
    cells, current, i = [], "", 0
    body = line.strip()
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            current += body[i:i + 2]
            i += 2
            continue
        if body[i] == "|":
            cells.append(current)
            current = ""
        else:
            current += body[i]
        i += 1
    cells.append(current)
    if body.startswith("|"):
        cells = cells[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        cells = cells[:-1]
    return [cell.strip() for cell in cells]


@dataclass
class Table:
    page: Path
    line: int  # the header's line number
    header: list[str]
    delimiter: list[str]
    rows: list[tuple[int, list[str]]]


def tables(page: Path) -> list[Table]:
    """Every markdown table of a page (tables inside code blocks are text, not tables)."""
    lines = prose_lines(text(page))
    found, i = [], 0
    while i < len(lines) - 1:
        number, line = lines[i]
        next_number, next_line = lines[i + 1]
        if "|" in line and next_number == number + 1 and DELIMITER_ROW.match(next_line) and "-" in next_line:
            table = Table(page, number, split_row(line), split_row(next_line), [])
            i += 2
            while i < len(lines) and lines[i][1].strip() and "|" in lines[i][1] and lines[i][0] == lines[i - 1][0] + 1:
                table.rows.append((lines[i][0], split_row(lines[i][1])))
                i += 1
            found.append(table)
        else:
            i += 1
    return found


def all_tables() -> list[Table]:
    return [table for page in PAGES for table in tables(page)]


def builtin_figures() -> dict[str, object]:
    load_builtins()
    return {name: spec for name, spec in REGISTRY.items() if spec.func.__module__.startswith("lens_pipeline.")}


# --- The cache table, the figures, the model sources ------------------------------------------


def test_the_cache_table_is_the_code_table() -> None:
    assert arrays_markdown() in text(DOCS / "cache.md"), (
        "docs/cache.md's array table differs from lens_pipeline.store.cache.arrays_markdown(): paste its output "
        "(python -c \"from lens_pipeline.store.cache import arrays_markdown; print(arrays_markdown())\")")


FIGURE_TABLE_HEADER = ["name", "scope", "what it shows"]


def figure_table() -> Table:
    found = [t for t in tables(DOCS / "figures.md") if [c.lower() for c in t.header] == FIGURE_TABLE_HEADER]
    assert len(found) == 1, f"docs/figures.md should hold one table headed | {' | '.join(FIGURE_TABLE_HEADER)} |"
    return found[0]


def figure_row_problems(table: Table, figures: dict[str, object]) -> list[str]:
    """What is wrong with each row of the built-in figure table: its cells must be one registered
    figure's name in backticks, that figure's real scope, and words saying what it shows, with
    "opt-in" exactly for the figures that are not drawn by default."""
    problems = []
    for number, cells in table.rows:
        where = f"docs/figures.md:{number}"
        if len(cells) != len(FIGURE_TABLE_HEADER):
            problems.append(f"{where}: {len(cells)} cells under a {len(FIGURE_TABLE_HEADER)}-column header: {cells}")
            continue
        name_cell, scope, what = cells
        name = re.fullmatch(r"`([A-Za-z_][\w]*)`", name_cell)
        if not name:
            problems.append(f"{where}: the name cell {name_cell!r} is not one figure name in backticks")
            continue
        spec = figures.get(name.group(1)) or REGISTRY.get(name.group(1))
        if spec is None:
            problems.append(f"{where}: {name.group(1)!r} is not a registered figure")
            continue
        if scope not in SCOPES:
            problems.append(f"{where}: scope {scope!r} is not one of the registry's scopes {SCOPES}")
        elif scope != spec.scope:
            problems.append(f"{where}: {spec.name} has scope {spec.scope!r}, not {scope!r}")
        if len(re.findall(r"[A-Za-z]{3,}", what)) < 3:
            problems.append(f"{where}: the 'what it shows' cell {what!r} does not say what the figure shows")
        if ("opt-in" in what) == spec.default:
            problems.append(f"{where}: {spec.name} is {'drawn by default' if spec.default else 'opt-in'}, "
                            f"the row {'says opt-in' if spec.default else 'does not say opt-in'}")
    return problems


def test_the_figure_table_says_what_its_header_says() -> None:
    problems = figure_row_problems(figure_table(), builtin_figures())
    assert not problems, "\n".join(problems)


def test_every_builtin_figure_is_in_the_figure_table() -> None:
    names = [re.sub(r"`", "", cells[0]) for _, cells in figure_table().rows if cells]
    missing = [name for name in builtin_figures() if name not in names]
    twice = sorted({name for name in names if names.count(name) > 1})
    assert not missing, f"built-in figures missing from docs/figures.md's figure table: {missing}"
    assert not twice, f"figures with more than one row in docs/figures.md's figure table: {twice}"


def test_a_garbled_figure_row_is_caught() -> None:
    """A row of the figures-per-second table pasted into the figure table fails both checks."""
    garbled = "| attention_overview | 6.0 · 5.5 | 17.3 | 20.1 | about |"
    table = Table(DOCS / "figures.md", 1, FIGURE_TABLE_HEADER, ["---"] * 3, [(3, split_row(garbled))])
    assert len(split_row(garbled)) != len(table.header)
    assert figure_row_problems(table, builtin_figures())
    fixed = "| `attention_overview` | 6.0 · 5.5 | every layer × head |"
    table.rows = [(3, split_row(fixed))]
    assert any("scope" in p for p in figure_row_problems(table, builtin_figures()))


def test_every_model_source_is_documented() -> None:
    page = text(DOCS / "activations.md")
    missing = [name for name in models.MODEL_SOURCES if not re.search(rf"^- `{re.escape(name)}`:", page, re.M)]
    assert not missing, f"model sources missing from docs/activations.md's list (a line '- `NAME`: ...'): {missing}"


# --- Tables ------------------------------------------------------------------------------------


def test_split_row_follows_github() -> None:
    assert split_row("| a | b |") == ["a", "b"]
    assert split_row(r"| max \|row sum − 1\| | x |") == [r"max \|row sum − 1\|", "x"]
    assert split_row("| `a|b` | c |") == ["`a", "b`", "c"]  # GitHub splits inside backticks too
    assert split_row("a | b") == ["a", "b"]
    assert split_row("| a | |") == ["a", ""]


def test_every_table_row_has_the_headers_cells() -> None:
    found = all_tables()
    assert len(found) > 20, "the table parser found almost no tables"
    problems = []
    for table in found:
        width = len(table.header)
        if len(table.delimiter) != width:
            problems.append(f"{rel(table.page)}:{table.line + 1}: delimiter row has {len(table.delimiter)} cells, "
                            f"header {width}")
        for number, cells in table.rows:
            if len(cells) != width:
                hint = " (a | inside backticks splits a cell too: write \\|)" if "`" in "".join(cells) else ""
                problems.append(f"{rel(table.page)}:{number}: {len(cells)} cells under a {width}-cell header "
                                f"{table.header}{hint}")
    assert not problems, "\n".join(problems)


# --- Every flag of every command ---------------------------------------------------------------


def parser_of_main(main: Callable[..., object]) -> argparse.ArgumentParser:
    """The parser a command builds inside its main(), caught at parse_args (nothing runs)."""
    caught: list[argparse.ArgumentParser] = []

    class Caught(Exception):
        pass

    def catch(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        caught.append(self)
        raise Caught

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = catch  # type: ignore[method-assign]
    try:
        main([])
    except Caught:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    assert caught, f"{main.__module__}.main built no argparse parser"
    return caught[0]


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    from lens_pipeline import export, server
    from lens_pipeline.activations import cli as activations_cli
    from lens_pipeline.corpus import stage as corpus_stage
    from lens_pipeline.figures import cli as figures_cli
    from lens_pipeline.knitting import survey

    parsers = {
        "python -m lens_pipeline.activations": activations_cli.build_parser(),
        "python -m lens_pipeline.figures": figures_cli.build_parser(),
        "python -m lens_pipeline.server": server.build_parser(),
        "python -m lens_pipeline.export": export.build_parser(),
        "python -m lens_pipeline.corpus": corpus_stage.build_parser(),
    }
    build = getattr(survey, "build_parser", None)
    parsers["python -m lens_pipeline.knitting.survey"] = build() if build else parser_of_main(survey.main)
    return parsers


def documented_flag(flag: str, code: list[str]) -> bool:
    pattern = re.compile(rf"(?<![\w-]){re.escape(flag)}(?![\w-])")
    return any(pattern.search(piece) for piece in code)


@pytest.mark.parametrize("command", list(command_parsers()))
def test_every_flag_of_every_command_is_documented(command: str) -> None:
    code = [span for page in PAGES for span in code_spans(text(page))]
    code += [block for page in PAGES for block in code_blocks(text(page))]
    flags = [flag for action in command_parsers()[command]._actions for flag in action.option_strings
             if flag.startswith("--") and flag != "--help"]
    assert flags, f"{command} has no flags?"
    missing = [flag for flag in flags if not documented_flag(flag, code)]
    assert not missing, (f"{command} flags not in README.md or docs/*.md as `--flag` text or in a code block: "
                         f"{missing}")


# --- The README as a guide, links, benchmarks --------------------------------------------------


def test_the_readme_is_a_guide() -> None:
    readme = text(README_PATH)
    lines = readme.count("\n") + 1
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}); move reference to docs/"
    assert ". .venv/bin/activate" in readme, "the README must say that commands run inside the virtualenv"
    for page in sorted(DOCS.glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
    long = [n for n, line in prose_lines(readme) if len(line) > 400]
    assert not long, f"README.md lines over 400 characters: {long}"


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for _, line in prose_lines(text(page)):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = github_anchor(heading.group(1))
            n = 1
            candidate = slug
            while candidate in found:
                candidate = f"{slug}-{n}"
                n += 1
            found.add(candidate)
    return found


def test_every_relative_link_resolves() -> None:
    problems = []
    for page in PAGES:
        prose = "\n".join(line for _, line in prose_lines(text(page)))
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto
            path_part, _, anchor = target.partition("#")
            linked = (page.parent / path_part).resolve() if path_part else page
            if not linked.exists():
                problems.append(f"{rel(page)}: link to {target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                problems.append(f"{rel(page)}: link to {target}: {rel(linked)} has no heading #{anchor}")
    assert not problems, "\n".join(problems)


def test_benchmarks_hold_current_numbers_only() -> None:
    """docs/benchmarks.md and the README: no history (issue numbers, commit ids, "Changed:" lists)."""
    problems = []
    for page in (README_PATH, DOCS / "benchmarks.md"):
        for number, line in enumerate(text(page).splitlines(), start=1):
            if re.search(r"\bissue\s*#?\d+|\(#\d+\)|^\s*Changed:", line, re.I):
                problems.append(f"{rel(page)}:{number}: {line.strip()[:80]}")
            if re.search(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", line):
                problems.append(f"{rel(page)}:{number}: looks like a commit id: {line.strip()[:80]}")
    assert not problems, "\n".join(problems)
