"""A static copy of the viewer for a selection of a save path: it opens from file:// or any static
host, with no server and no network.

    python -m lens_pipeline.export --save-path attn_data --out DIR [--model M,...] [--prompts HASH|TEXT,...]
                                   [--figures GLOB,...] [--max-mb N] [--single-file]
    python -m lens_pipeline.export --save-path attn_data --list-prompts     (hash, model, first words)

DIR holds index.html (the viewer's page with the server's Content-Security-Policy as a <meta>),
static/ (the stylesheet and the viewer's modules bundled into one classic script, entry
exported.js), data/index.js (display facts, summary, every figure and prompt row, the rows each
filter value lists), data/pN.js (one per prompt: its cache's answers — metadata, every head, every
token value the page offers, predictions, why each explained token was predicted, the causes it
tests with every head's card — and the text of its figures' patterns and documents)
and files/ (the figure files at their save-path paths). Every answer is the viewer API's own:
a ViewerApi over the selected index rows computes it (lens_pipeline.viewer); data files carry
them packed (viewer.transport) and gzipped. `--single-file` writes one HTML file for one prompt,
with its figures inlined as data: URLs.

Each `--prompts` entry names one prompt: the start of its hash, or a piece of its text (any case);
one that names no prompt or several is an error listing them. Figures are shown as the whole save
path has them: one drawn from caches that are not all in the export (a model-scope figure of a
one-prompt export) is not stale, and says what the export lacks (viewer.live_index, `part_of`).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import fnmatch
import gzip
import hashlib
import json
import mimetypes
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import quote, urlencode

from lens_pipeline.draw.display import FIGURE_STATUSES
from lens_pipeline.server import PAGE_CSP, STATIC_DIR, flags_for
from lens_pipeline.store import index
from lens_pipeline.viewer import Params, ViewerApi, resolve_inside
from lens_pipeline.viewer.bundle import bundle, stylesheet
from lens_pipeline.viewer.cause import CAUSAL_ARRAYS
from lens_pipeline.viewer.live_index import IndexView, LiveIndex
from lens_pipeline.viewer.rows import prompt_row, public_row
from lens_pipeline.viewer.transport import answer_key, ask, script_json

# The /api/figures filters besides q and status, and the row field each compares.
ROW_FIELDS = {"model": "model", "prompt": "prompt_hash", "function": "function", "scope": "scope", "layer": "layer",
              "head": "head"}
TEXT_VIEWS = ("markdown", "json", "text")  # figure views whose main file the page reads as text
# A page's meta CSP: the server's, less what only a header can say.
META_CSP = "; ".join(part for part in PAGE_CSP.split("; ") if not part.startswith("frame-ancestors"))


class ExportError(Exception):
    """A selection that exports nothing, or an output that cannot be written; one line."""


@dataclass
class Selection:
    models: tuple[str, ...] = ()  # empty: every model
    prompts: tuple[str, ...] = ()  # each a prompt's hash prefix or a piece of its text (resolve_prompts); empty: all
    figures: tuple[str, ...] = ()  # globs on function names; empty: every figure
    max_mb: float | None = None

    def wants_prompt(self, row: dict[str, Any]) -> bool:
        return ((not self.models or row.get("model") in self.models)
                and (not self.prompts or str(row.get("prompt_hash", "")).startswith(self.prompts)))

    def wants_figure(self, row: dict[str, Any], keys: set[tuple[str, str]]) -> bool:
        cached = (row.get("model", ""), row.get("prompt_hash", "")) in keys
        model_scope = not row.get("prompt_hash") and (not self.models or row.get("model") in self.models)
        return (cached or model_scope) and (not self.figures or any(fnmatch.fnmatchcase(str(row.get("function")), g)
                                                                      for g in self.figures))


@dataclass
class Export:
    """The selected part of a save path, as the viewer API sees it."""

    save_path: Path
    rows: list[dict[str, Any]]
    api: ViewerApi = field(init=False)
    view: IndexView = field(init=False)
    _tmp: tempfile.TemporaryDirectory = field(init=False)

    def __post_init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="lens-export-")
        index.index_path(self._tmp.name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows),
                                                    encoding="utf-8")
        whole = LiveIndex(self.save_path).view()  # figures are stale or not as in the whole save path
        self.api = ViewerApi(self.save_path, live=LiveIndex(Path(self._tmp.name), part_of=whole), flags_for=flags_for)
        self.view = self.api.index.view()

    def close(self) -> None:
        self._tmp.cleanup()


FIRST_WORDS = 8  # of a prompt's text, where a prompt is named in one line


def first_words(text: str) -> str:
    words = text.split()
    return " ".join(words[:FIRST_WORDS]) + (" …" if len(words) > FIRST_WORDS else "")


def cached_prompts(rows: Iterable[dict[str, Any]], models: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Each cached (model, prompt) of these models (default: all) in the newest index rows, as the
    viewer lists them: its current cache row, else its newest."""
    rows = [r for r in rows if r["kind"] == "cache" and (not models or r.get("model") in models)]
    newest = {(r.get("model", ""), r.get("prompt_hash", "")): r for r in rows}
    return list((newest | index.current_caches(rows)).values())


def prompt_line(row: dict[str, Any]) -> str:
    """`hash  model  first words`: how a prompt is listed and named in errors."""
    return f"{row.get('prompt_hash', '')}  {row.get('model', '')}  {first_words(str(row.get('text') or ''))}"


def resolve_prompts(rows: list[dict[str, Any]], selection: Selection) -> Selection:
    """The selection with each --prompts entry replaced by the hash(es) of the one prompt it names
    among the newest index rows: a hash prefix or a piece of the text (any case); the same text in
    several models is one prompt. ExportError when it names none or several."""
    if not selection.prompts:
        return selection
    rows = cached_prompts(rows, selection.models)
    hashes: list[str] = []
    for wanted in selection.prompts:
        lower = wanted.lower()
        found = [r for r in rows if str(r.get("prompt_hash", "")).startswith(lower)
                 or lower in str(r.get("text") or "").lower()]
        texts = {str(r.get("text") or "") for r in found}
        if not found:
            raise ExportError(f"nothing to export: --prompts {wanted!r} is neither the start of a cached prompt's hash "
                              f"nor part of a prompt's text; list them with --list-prompts")
        if len(texts) > 1:
            listed = "; ".join(prompt_line(r) for r in found[:8]) + ("; …" if len(found) > 8 else "")
            raise ExportError(f"--prompts {wanted!r} names {len(texts)} prompts: {listed}; "
                              "give more of the hash or the text")
        hashes.extend(str(r["prompt_hash"]) for r in found)
    return dataclasses.replace(selection, prompts=tuple(dict.fromkeys(hashes)))


def select(save_path: Path, selection: Selection, keep: set[tuple[str, str]] | None = None) -> Export:
    """The index rows of the selection (every cache row of a selected prompt, so its current cache
    stays the one the viewer shows; its figures; the selected models' model-scope figures)."""
    rows = list(index.latest(index.read_rows(save_path)).values())
    selection = resolve_prompts(rows, selection)
    keys = {(r.get("model", ""), r.get("prompt_hash", "")) for r in rows if r["kind"] == "cache" and selection.wants_prompt(r)}
    if keep is not None:
        keys &= keep
    chosen = [r for r in rows if (r["kind"] == "cache" and (r.get("model", ""), r.get("prompt_hash", "")) in keys)
              or (r["kind"] == "figure" and selection.wants_figure(r, keys))]
    if not keys:
        raise ExportError(f"nothing to export: no cached prompt of {save_path} matches the selection "
                          f"(models {','.join(selection.models) or 'all'}, prompts {','.join(selection.prompts) or 'all'})")
    return Export(save_path, chosen)


# --------------------------------------------------------------------------- the answers


def token_requests(info: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every /api/tokens query the tokens view can make for a cache (tokens.js): each value kind the
    cache offers, at each of its layers, neurons and colour ranges."""
    for kind in info["value_kinds"]:
        if kind["reason"]:
            continue
        for layer in [value for value, _ in kind["layers"] or []] or [None]:
            neurons = info["neuron_ids"][layer] if kind["by_neuron"] else [None]
            for neuron in neurons:
                for colour_range in [name for name, _ in kind["ranges"] or []] or [None]:
                    yield {"value": kind["name"], "layer": layer, "neuron": neuron, "range": colour_range}


def cache_answers(export: Export, model: str, prompt: str) -> dict[str, Any]:
    """answer_key -> reply for everything the page may ask about one cached prompt."""
    where = {"model": model, "prompt": prompt}
    table: dict[str, Any] = {}

    def add(path: str, params: dict[str, Any]) -> dict[str, Any]:
        table[answer_key(path, params)] = reply = ask(export.api, path, params)
        return reply

    info = add("cache", where)
    if "body" in info:
        info = info["body"]
        for layer in range(info["n_layers"]):
            for head in range(info["n_heads"]):
                add("pattern", {**where, "layer": layer, "head": head})
        for request in token_requests(info):
            add("tokens", {**where, **request})
        add("predictions", where)
        causes = add("cause", where) if any(name in info["arrays"] for name in CAUSAL_ARRAYS) else None
        if info.get("explains") or causes:
            why_requests(add, where, causes)
        if causes and "body" in causes:
            for layer in range(info["n_layers"]):
                for head in range(info["n_heads"]):
                    add("cause_head", {**where, "layer": layer, "head": head})
    return table


def why_requests(add: Callable[[str, dict[str, Any]], dict[str, Any]], where: dict[str, Any],
                 causes: dict[str, Any] | None) -> None:
    """The why view's answers an export keeps: its first one, each explained position, and the position the
    cause view (`causes`: its answer) measures; the lens alone exists at every position, those answers stay out."""
    first = add("why", where)
    if "body" not in first:
        return
    positions = list(first["body"].get("target_positions") or [])
    if causes and "body" in causes:
        positions.append(causes["body"]["target_position"])
    for position in dict.fromkeys(positions):
        add("why", {**where, "position": position})


def file_texts(export: Export, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """answer_key("file", {path}) -> {"body": text} for the documents of these figure rows."""
    table = {}
    for row in rows:
        for role in text_files(row):
            path = resolve_inside(export.api.root, role["path"])
            if path.is_file():
                table[answer_key("file", {"path": role["path"]})] = {"body": path.read_text(encoding="utf-8", errors="replace")}
    return table


def text_files(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The files of a figure row the page reads as text: a document's main file, a knitting pattern."""
    if row["status"] in ("error", "skipped"):
        return []
    picked = [row["main"]] if row["view"] in TEXT_VIEWS and row["main"] else []
    return picked + ([row["pattern"]] if row.get("pattern") else [])


def index_table(export: Export) -> dict[str, Any]:
    """What the page needs before any prompt: display facts, summary, every figure and prompt row,
    and for each filter value the rows the API lists for it."""
    view, browse = export.view, export.api.browse

    def params(route: str, query: str) -> Params:  # as the endpoint would read them
        return Params(query, export.api.routes[route][1])

    position = {id(row): i for i, row in enumerate(view.figures)}
    figures = [public_row(row, view, full=True) for row in view.figures]
    domains = {name: {str(r[field]) for r in view.figures if r.get(field) not in (None, "")}
               for name, field in ROW_FIELDS.items()}
    domains["status"] = set(FIGURE_STATUSES)
    figure_sets: dict[str, dict[str, list[int]]] = {}
    for name, values in domains.items():
        every = {} if name == "status" else {"status": "all"}  # a filter alone: every status
        figure_sets[name] = {value: [position[id(r)] for r in browse.matching(
            params("/api/figures", urlencode({name: value, **every})), view)] for value in sorted(values)}
    caches = list(view.caches.values())
    at = {id(row): i for i, row in enumerate(caches)}
    models = sorted({key[0] for key in view.caches})
    prompt_sets = {"model": {m: [at[id(r)] for r in browse.matching_prompts(params("/api/prompts", f"model={quote(m)}"), view)]
                             for m in models}}
    figure_ids = {answer_key("figure", {"model": r["model"], "prompt": r["prompt_hash"], "function": r["function"],
                                        "layer": r["layer"], "head": r["head"]}): i for i, r in enumerate(figures)}
    return {"answers": {answer_key(p, {}): ask(export.api, p, {}) for p in ("display", "summary")},
            "figures": figures, "prompts": [prompt_row(row, view) for row in caches],
            "filters": {"figures": figure_sets, "prompts": prompt_sets}, "figure_ids": figure_ids,
            "texts": [[m, h, text] for (m, h), text in view.texts.items()], "version": view.version}


def relink(rows: list[dict[str, Any]], url: Callable[[str], str]) -> None:
    """Point each row's file URLs at the copies the export holds (`url(path)`)."""
    for row in rows:
        for entry in row["files"]:
            entry["url"] = url(entry["path"])
        for role in ("image", "main", "pattern"):
            if row.get(role):
                row[role] = dict(row[role], url=url(row[role]["path"]))
        if row.get("path"):
            row["url"] = url(row["path"])


def payload(table: dict[str, Any]) -> str:
    """A data file's table as base64 of gzipped JSON (exported.js decodes it)."""
    data = json.dumps(table, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return base64.b64encode(gzip.compress(data, compresslevel=6, mtime=0)).decode("ascii")


def data_script(name: str, table: dict[str, Any]) -> str:
    return f'lensExportData("{name}", "{payload(table)}");\n'


# --------------------------------------------------------------------------- the page


def page_html(head: str, body_end: str = "") -> str:
    """The viewer's page (static/index.html) with `head` in place of its stylesheet and script tags."""
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    tags = ['  <link rel="icon" href="/static/favicon.svg" type="image/svg+xml">\n',
            '  <link rel="stylesheet" href="/static/style.css">\n',
            '  <script type="module" src="/static/main.js"></script>\n']
    for tag in tags:
        if tag not in page:
            raise ExportError(f"static/index.html no longer holds {tag.strip()}; update lens_pipeline.export.page_html")
    page = page.replace(tags[0], "").replace(tags[1], "").replace(tags[2], head)
    return page.replace("</body>", body_end + "</body>")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _data_url(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind == "image/svg+xml":
        kind += ";charset=utf-8"
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


@dataclass
class Written:
    out: Path
    prompts: int
    figures: int
    files: int
    bytes: int
    seconds: float
    left_out: int = 0

    def line(self) -> str:
        left = f"; {self.left_out} prompt(s) left out to stay under --max-mb" if self.left_out else ""
        return (f"exported {self.prompts} prompt(s), {self.figures} figure(s), {self.files} file(s) to {self.out}: "
                f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s{left}")


def _by_prompt(figures: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in figures:
        grouped.setdefault((row["model"], row["prompt_hash"]), []).append(row)
    return grouped


def _files_of(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({f["path"] for row in rows if row["status"] not in ("error", "skipped") for f in row["files"]})


def _assets_of(rows: list[dict[str, Any]]) -> list[str]:
    """The shared scripts interactive figures load (lens_pipeline.draw.interactive), as their rows record."""
    return sorted({a["path"] for row in rows if row.get("status") == "ok" for a in row.get("assets") or ()})


def _bytes(root: Path, paths: list[str]) -> int:
    return sum(f.stat().st_size for p in paths if (f := root / p).is_file())


def export_static(save_path: str | Path, out: str | Path, selection: Selection | None = None) -> Written:
    """Write the static viewer for `selection` of `save_path` into the folder `out`. With
    `selection.max_mb`, prompts are taken in index order while the export stays under that size
    (the page, the index and the model-scope figures count first)."""
    started = time.perf_counter()
    save_path, out, selection = Path(save_path), Path(out), selection or Selection()
    export = select(save_path, selection)  # first: a selection of nothing writes nothing
    try:
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()) and not (out / "index.html").exists():
            raise ExportError(f"{out} exists and is not an export (no index.html); choose an empty or new folder")
        by_prompt = _by_prompt([public_row(row, export.view) for row in export.view.figures])
        payloads, sizes = {}, {}
        for key in export.view.caches:
            rows = by_prompt.get(key, [])
            payloads[key] = payload(cache_answers(export, *key) | file_texts(export, rows))
            sizes[key] = len(payloads[key]) + _bytes(export.api.root, _files_of(rows))
        left_out = 0
        if selection.max_mb is not None:
            shared = [row for key, rows in by_prompt.items() if key not in export.view.caches for row in rows]
            total = (len(payload(index_table(export))) + len(bundle("exported")) + len(stylesheet())
                     + _bytes(export.api.root, _files_of(shared) + _assets_of(export.view.figures)))
            keep = set()
            for key, size in sizes.items():
                if total + size > selection.max_mb * 1e6:
                    break
                keep.add(key)
                total += size
            if not keep:
                raise ExportError(f"not even one prompt fits in --max-mb {selection.max_mb:g}")
            left_out = len(sizes) - len(keep)
            if left_out:
                export.close()
                export = select(save_path, selection, keep)
        written = _write_folder(export, out, payloads)
        return Written(out, written[0], written[1], written[2], written[3], time.perf_counter() - started, left_out)
    finally:
        export.close()


def _write_folder(export: Export, out: Path, payloads: dict[tuple[str, str], str]) -> tuple[int, int, int, int]:
    """(prompts, figures, files, bytes) written."""
    for part in ("data", "files", "static"):
        shutil.rmtree(out / part, ignore_errors=True)
    (out / "data").mkdir()
    (out / "static").mkdir()
    table = index_table(export)
    relink(table["figures"], lambda path: "files/" + quote(path))
    by_prompt = _by_prompt(table["figures"])
    table["prompt_files"], table["text_files"] = {}, {}
    for i, key in enumerate(export.view.caches):
        name = f"p{i}"
        table["prompt_files"][" ".join(key)] = name
        table["text_files"].update({role["path"]: name for row in by_prompt.get(key, []) for role in text_files(row)})
        (out / "data" / f"{name}.js").write_text(f'lensExportData("{name}", "{payloads[key]}");\n', encoding="utf-8")
    shared = [row for key, rows in by_prompt.items() if key not in export.view.caches for row in rows]
    if shared:  # model-scope figures: their documents in a data file of their own
        table["text_files"].update({role["path"]: "shared" for row in shared for role in text_files(row)})
        (out / "data" / "shared.js").write_text(data_script("shared", file_texts(export, shared)), encoding="utf-8")
    (out / "data" / "index.js").write_text(data_script("index", table), encoding="utf-8")
    files = _files_of(table["figures"]) + _assets_of(export.view.figures)
    for path in files:
        source = export.api.root / path
        if source.is_file():
            (out / "files" / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, out / "files" / path)
    (out / "static" / "style.css").write_text(stylesheet(), encoding="utf-8")
    (out / "static" / "viewer.js").write_text(bundle("exported") + "lensViewer();\n", encoding="utf-8")
    shutil.copyfile(STATIC_DIR / "favicon.svg", out / "static" / "favicon.svg")
    head = (f'  <meta http-equiv="Content-Security-Policy" content="{META_CSP}">\n'
            '  <link rel="icon" href="static/favicon.svg" type="image/svg+xml">\n'
            '  <link rel="stylesheet" href="static/style.css">\n'
            '  <script defer src="static/viewer.js"></script>\n'
            '  <script defer src="data/index.js"></script>\n')
    (out / "index.html").write_text(page_html(head), encoding="utf-8")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return len(export.view.caches), len(table["figures"]), len(files), size


def export_single_file(save_path: str | Path, out: str | Path, selection: Selection) -> Written:
    """One self-contained HTML file for one prompt: the page, its data, its figures as data: URLs."""
    started = time.perf_counter()
    save_path, out = Path(save_path), Path(out)
    export = select(save_path, selection)
    try:
        if len(export.view.caches) != 1:
            raise ExportError(f"--single-file exports one prompt; the selection has {len(export.view.caches)} "
                              "(narrow it with --prompts HASH and --model)")
        key = next(iter(export.view.caches))
        table = index_table(export)
        relink(table["figures"], lambda path: _data_url(resolve_inside(export.api.root, path)))
        table["prompt_files"] = {" ".join(key): "p0"}
        table["text_files"] = {role["path"]: "p0" for row in table["figures"] for role in text_files(row)}
        data = {"index": payload(table), "p0": payload(cache_answers(export, *key) | file_texts(export, table["figures"]))}
        script = bundle("exported") + "lensViewer();\n"
        style = stylesheet()
        csp = (f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; img-src data:; "
               "frame-src data:; object-src 'none'; base-uri 'none'; form-action 'none'")
        icon = _data_url(STATIC_DIR / "favicon.svg")
        head = (f'  <meta http-equiv="Content-Security-Policy" content="{csp}">\n'
                f'  <link rel="icon" href="{icon}" type="image/svg+xml">\n'
                f"  <style>{style}</style>\n")
        body_end = (f'  <script type="application/json" id="lens-data">{script_json(data)}</script>\n'
                    f"  <script>{script}</script>\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page_html(head, body_end), encoding="utf-8")
        return Written(out, 1, len(table["figures"]), 0, out.stat().st_size, time.perf_counter() - started)
    finally:
        export.close()


# --------------------------------------------------------------------------- CLI


def _list(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lens_pipeline.export",
        description="Write a static copy of the viewer (grid, filters, heads with exact values, tokens, knitting) "
                    "for a selection of a save path; it opens from file:// or any static host, offline.")
    parser.add_argument("--save-path", default="attn_data", help="folder with index.jsonl (default: %(default)s)")
    parser.add_argument("--out", help="folder to write (or, with --single-file, the HTML file); required unless "
                        "--list-prompts")
    parser.add_argument("--model", help="models to export, comma-separated (default: all)")
    parser.add_argument("--prompts", help="prompts to export, comma-separated, each the start of its hash or a piece of its "
                        "text (any case), e.g. 'a3f9' or 'poor yorick' (default: all; see --list-prompts)")
    parser.add_argument("--figures", help="figure functions to export, comma-separated globs, e.g. 'attention_*' (default: all)")
    parser.add_argument("--max-mb", type=float, help="leave out the last prompts once the export would pass this size")
    parser.add_argument("--single-file", action="store_true", help="one self-contained HTML file for one prompt")
    parser.add_argument("--list-prompts", action="store_true",
                        help="list the cached prompts (of --model) as 'hash  model  first words' and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.out and not args.list_prompts:
        parser.error("--out is required (or --list-prompts to list the prompts)")
    selection = Selection(_list(args.model), _list(args.prompts), _list(args.figures), args.max_mb)
    save_path = Path(args.save_path)
    if not index.index_path(save_path).is_file():
        print(f"error: {save_path} has no index.jsonl; run python -m lens_pipeline.activations first", file=sys.stderr)
        return 2
    if args.list_prompts:
        for row in cached_prompts(index.latest(index.read_rows(save_path)).values(), selection.models):
            print(prompt_line(row))
        return 0
    try:
        written = (export_single_file if args.single_file else export_static)(save_path, args.out, selection)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot write {args.out}: {error.strerror or error}", file=sys.stderr)
        return 2
    print(written.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
