"""Interactive figures: Plotly figures written as HTML pages that work offline, from file://, in the
viewer (a sandboxed frame), in a static export and inline in a notebook.

A figure function registered with formats=("html",) returns a `plotly.graph_objects.Figure`, or an
`Interactive` when a click on a point should open something; declaring view="interactive" (VIEW) lets
the viewer know before the first draw (the stage records that view for any Plotly page it writes):

    from lens_pipeline.draw.interactive import Interactive, Link

    @register_figure(scope="prompt", formats=("html",), view="interactive")
    def my_scatter(cache):
        figure = plotly.graph_objects.Figure(plotly.graph_objects.Scatter(y=cache.resid_norms[-1]))
        return figure                          # or Interactive(figure, links=[...]) (see Interactive)

The figures stage (`lens_pipeline.figures.call.draw`) turns it into a page with `page_bytes`:

- the figure travels as JSON in a `<script type="application/json">` data block, never as code;
- the page loads two scripts by relative path, never from a network: Plotly's own `plotly.min.js`
  (from the pinned plotly wheel) and this package's `interactive_page.js`, which draws the figure and
  handles clicks. Each is written ONCE per save path, under `assets/` with its version or content
  hash in the name (`ASSET_DIR`), atomically, and checked by size and sha256 before a page relies on
  it; the figure's index row lists them under `assets` (the export copies them);
- no inline script, so the viewer serves these pages with `lens_pipeline.server.INTERACTIVE_CSP`
  (scripts from the viewer's own origin only, no requests, a sandbox without same-origin) inside a
  frame sandboxed to `allow-scripts`; a click on a linked point posts `{lens: "open", params}` to the
  viewer around it, which opens that view (its hash route); alone (file://, a notebook) the page
  names the point under the figure instead.

In a notebook, `notebook_html(path)` makes a saved page inline (Plotly's script inlined once per kernel)
and `figures.show` uses it for rows of this view; `display(figure)` shows any figure the same way.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lens_pipeline.store.cache import write_atomic

VIEW = "interactive"  # the registry view (draw.registry.VIEWS) of these figures
ASSET_DIR = "assets"  # under the save path: the one copy of each script the pages load
PAGE_JS = Path(__file__).with_name("interactive_page.js")
DATA_ID = "lens-figure-data"
# Plotly options every page gets: no logo link, and a size that follows the frame.
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


@dataclass(frozen=True)
class Link:
    """Where a click on a point leads: `params` name a viewer view as its URL hash would
    (e.g. {"view": "head", "model": ..., "prompt": ..., "layer": 3, "head": 2}); `label` is what the
    page shows when no viewer is around it."""

    label: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Interactive:
    """A Plotly figure and the links its points open: a point whose `customdata` is the integer i
    (or a list starting with i) opens `links[i]`."""

    figure: Any  # plotly.graph_objects.Figure
    links: list[Link] = field(default_factory=list)
    title: str = ""


def is_interactive(obj: Any) -> bool:
    """An `Interactive` or a Plotly figure (told apart without importing plotly)."""
    return isinstance(obj, Interactive) or (type(obj).__module__.startswith("plotly.") and hasattr(obj, "to_plotly_json"))


def as_interactive(obj: Any) -> Interactive:
    return obj if isinstance(obj, Interactive) else Interactive(obj)


# --------------------------------------------------------------------------- the shared scripts


def plotly_js_path() -> Path:
    """plotly.min.js as the pinned plotly wheel ships it."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


@functools.cache
def _sources() -> tuple[tuple[str, bytes, str], ...]:
    """(asset name, bytes, sha256) of each script a page loads, Plotly's first."""
    from plotly.offline import get_plotlyjs_version

    plotly_bytes = plotly_js_path().read_bytes()
    page_bytes = PAGE_JS.read_bytes()
    page_sha = hashlib.sha256(page_bytes).hexdigest()
    return ((f"plotly-{get_plotlyjs_version()}.min.js", plotly_bytes, hashlib.sha256(plotly_bytes).hexdigest()),
            (f"lens-interactive-{page_sha[:12]}.js", page_bytes, page_sha))


def asset_paths() -> list[str]:
    """The scripts' paths relative to a save path, in load order."""
    return [f"{ASSET_DIR}/{name}" for name, _, _ in _sources()]


_checked: dict[str, tuple[int, int]] = {}  # asset file -> (mtime_ns, size) when last found intact


def ensure_assets(save_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Write the scripts under SAVE_PATH/assets unless an intact copy is there (size and sha256 as
    the package's); the entries {path, bytes, sha256} a figure row records under `assets`."""
    entries = []
    for (name, data, sha), relpath in zip(_sources(), asset_paths()):
        target = Path(save_path) / relpath
        try:
            stat = target.stat()
            key = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = None
        if key is None or _checked.get(str(target)) != key:
            if key is None or key[1] != len(data) or hashlib.sha256(target.read_bytes()).hexdigest() != sha:
                write_atomic(target, data, durable=False)  # a rename: a page never sees half a script
            stat = target.stat()
            _checked[str(target)] = (stat.st_mtime_ns, stat.st_size)
        entries.append({"path": relpath, "bytes": len(data), "sha256": sha})
    return entries


# --------------------------------------------------------------------------- the page


def figure_spec(obj: Any) -> str:
    """The data block's JSON: the figure (Plotly's own encoding: numpy arrays as typed arrays), the
    Plotly options and the links; no '<' in it, so nothing in the data ends the <script> early."""
    import plotly.io

    shown = as_interactive(obj)
    links = [{"label": link.label, "params": link.params} for link in shown.links]
    figure_json = plotly.io.to_json(shown.figure, validate=False)
    text = f'{{"figure":{figure_json},"config":{json.dumps(PLOTLY_CONFIG)},"links":{json.dumps(links, ensure_ascii=False)}}}'
    return text.replace("<", "\\u003c")


def _title(obj: Any) -> str:
    shown = as_interactive(obj)
    if shown.title:
        return shown.title
    title = shown.figure.layout.title.text if shown.figure.layout.title else None
    return str(title or "lens_pipeline figure")


STYLE = ("html,body{margin:0;height:100%;background:#fff;font:13px system-ui,sans-serif}"
         ".lens-figure{width:100%;height:calc(100% - 26px);min-height:360px}"
         ".lens-picked{margin:4px 8px;min-height:18px;color:#333}")


def _body(spec: str, figure_id: str) -> str:
    return (f'<div class="lens-figure" id="{figure_id}"></div>\n'
            f'<p class="lens-picked" role="status" aria-live="polite"></p>\n'
            f'<script type="application/json" class="{DATA_ID}">{spec}</script>\n')


def page_html(obj: Any, relpath: str) -> str:
    """The page for the file at `relpath` (relative to the save path): scripts by relative path."""
    here = posixpath.dirname(relpath)
    scripts = "".join(f'<script src="{html.escape(posixpath.relpath(asset, here or "."))}"></script>\n'
                      for asset in asset_paths())
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f"<title>{html.escape(_title(obj))}</title>\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<style>{STYLE}</style>\n{scripts}</head><body>\n{_body(figure_spec(obj), 'figure')}</body></html>\n")


def page_bytes(obj: Any, save_path: str | os.PathLike[str], relpath: str) -> tuple[bytes, list[dict[str, Any]]]:
    """The page's bytes for SAVE_PATH/relpath, after making sure the scripts it loads are there;
    and the asset entries to record."""
    assets = ensure_assets(save_path)
    return page_html(obj, relpath).encode("utf-8"), assets


# --------------------------------------------------------------------------- notebooks

_inlined_in_kernel = False  # Plotly's script goes into the first output only


def inline_html(obj_or_spec: Any, height: int = 520) -> str:
    """A figure (or a saved page's data block text) as a notebook output: Plotly's script inlined in
    the first such output of this kernel, this package's drawing script in each (it is small)."""
    global _inlined_in_kernel
    spec = obj_or_spec if isinstance(obj_or_spec, str) else figure_spec(obj_or_spec)
    figure_id = f"lens-figure-{uuid.uuid4().hex[:12]}"
    parts = [f'<div style="height:{int(height)}px">', _body(spec, figure_id), "</div>"]
    if not _inlined_in_kernel:
        plotly_js = _sources()[0][1].decode("utf-8").replace("</script", "<\\/script")  # cannot end its element
        parts.insert(0, f"<script>{plotly_js}</script>")
        _inlined_in_kernel = True
    page_js = _sources()[1][1].decode("utf-8")
    parts.append(f"<script>{page_js}</script>")
    return "\n".join(parts)


def saved_spec(path: str | os.PathLike[str]) -> str:
    """The data block of a page this module wrote."""
    text = Path(path).read_text(encoding="utf-8")
    start_tag = f'<script type="application/json" class="{DATA_ID}">'
    start = text.index(start_tag) + len(start_tag)
    return text[start:text.index("</script>", start)]


def notebook_html(path: str | os.PathLike[str], height: int = 520) -> str:
    """A saved interactive page as a notebook output (see inline_html)."""
    return inline_html(saved_spec(path), height)


def display(obj: Any, height: int = 520) -> None:
    """Show a figure inline in Jupyter, offline (Plotly's script from the wheel, once per kernel)."""
    from IPython.display import HTML
    from IPython.display import display as show

    show(HTML(inline_html(obj, height)))
