"""The head roles figure: a model's four head-detector scores (lens_pipeline/capture/head_roles.py,
read with lens_pipeline.store.head_roles) as [layer x head] heatmaps, one panel per role on one 0..1
scale, the top heads of each framed and listed, and the causal check of the top induction head
written under them. Drawn from `caches/<model>/head_roles.json` alone, never from the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from lens_pipeline.draw import canvas, colormap
from lens_pipeline.draw.builtins.plotting import token_label
from lens_pipeline.draw.registry import register_figure
from lens_pipeline.store.cache import Cache
from lens_pipeline.store.head_roles import HEAD_ROLES_JSON, ROLES, head_label, roles_beside

CMAP = colormap.ATTENTION_CMAP
MARK = (220, 40, 40)  # the frame around a top head: red stands out on every viridis cell
N_MARKED = 3  # top heads framed and listed per panel
# What each panel's colour measures, in the words of its title.
PANEL_TITLES = {
    "previous_token": "previous token: attention on position i−1",
    "duplicate_token": "duplicate token: attention on earlier copies of the token",
    "induction": "induction: attention on the token after the earlier copy",
    "first_token": "first token: attention on position 0",
}


class HeadRolesMissing(Exception):
    """The model has no head roles in its save path (made before them, or they failed)."""


def roles_for(cache: Cache) -> dict[str, Any]:
    """The head roles beside a cache (caches/<model>/head_roles.json); HeadRolesMissing when there are none."""
    roles = roles_beside(cache.path)
    if roles is None:
        raise HeadRolesMissing(f"no head roles at {Path(cache.path).parent / HEAD_ROLES_JSON}: run python -m "
                               f"lens_pipeline.activations for this model (it writes them whenever it has the model loaded)")
    return roles


def causal_sentence(roles: dict[str, Any]) -> str:
    """The causal check in one sentence, or why there is none."""
    check = roles.get("causal_check")
    if not check:
        return "Causal check: none (a bidirectional encoder has no next-token loss on repeated sequences)."
    top = check["top_head"]
    worst = max(check["random_heads"], key=lambda r: r["loss"], default=None)
    against = (f"; zeroing each of {len(check['random_heads'])} random heads raises it by {check['rise_random_max']:+.2f} "
               f"at most (L{worst['layer']}H{worst['head']})") if worst else ""
    verdict = "confirmed" if check["confirmed"] else "NOT confirmed"
    return (f"Causal check ({verdict}): zeroing the top induction head L{top['layer']}H{top['head']} raises the loss on "
            f"the repeated sequences' second half from {check['loss_clean']:.2f} to {check['loss_ablated_top']:.2f} nats "
            f"({check['rise_top']:+.2f}){against}.")


def _panel_size(n_layers: int, n_heads: int) -> tuple[int, int, int, int, int]:
    """(cell_w, cell_h, label_w, panel_w, panel_h) of one role's panel."""
    cell_w, cell_h = max(12, min(28, 320 // n_heads)), max(6, min(16, 420 // n_layers))
    line = canvas.line_height()
    label_w = 12 + canvas.text_width(str(n_layers - 1)) + line
    panel_w = max(label_w + n_heads * cell_w + 70, 330)
    panel_h = line + 4 + n_layers * cell_h + 2 * line + 6 + (N_MARKED + 1) * line
    return cell_w, cell_h, label_w, panel_w, panel_h


def _panel(picture: canvas.Canvas, x: int, y: int, role: str, table: np.ndarray | None, n_layers: int,
           n_heads: int) -> canvas.Grid | None:
    """One role's heatmap (layer 0 at the bottom) with its axes, colour bar and top heads; None when not measured."""
    cell_w, cell_h, label_w, panel_w, _ = _panel_size(n_layers, n_heads)
    line = canvas.line_height()
    picture.text(x, y, canvas.fit_text(PANEL_TITLES[role], panel_w - 8))
    top = y + line + 4
    if table is None:
        picture.wrap(x + label_w, top + 10, "not measured: a bidirectional encoder has no induction on repeated "
                     "sequences", panel_w - label_w - 8)
        return None
    values = np.nan_to_num(table[::-1], nan=0.0)
    grid = picture.heatmap(x + label_w, top, colormap.to_index(values, 0.0, 1.0), CMAP, cell_w, cell_h)
    picture.frame(grid)
    picture.y_labels(grid, [str(layer) for layer in range(n_layers - 1, -1, -1)])
    picture.x_labels(grid, [str(head) for head in range(n_heads)], vertical=cell_w < 16)
    picture.text(x + 2, grid.y + grid.height / 2, "layer", color=canvas.MUTED, anchor="lm", vertical=True)
    picture.text(grid.x + grid.width / 2, grid.y + grid.height + line + 2, "head", color=canvas.MUTED, anchor="mt")
    picture.colorbar(grid.x + grid.width + 10, grid.y, grid.height, CMAP,
                     [(t, canvas.number(t)) for t in (0.0, 0.25, 0.5, 0.75, 1.0)], label="attention share")
    order = np.argsort(-np.nan_to_num(table, nan=-1.0), axis=None, kind="stable")[:N_MARKED]
    picture.inks.add(MARK)
    listed = grid.y + grid.height + 2 * line + 6
    picture.text(x + label_w, listed, "top heads (framed):", color=canvas.MUTED)
    for rank, flat in enumerate(order, start=1):
        layer, head = divmod(int(flat), n_heads)
        cx, cy = grid.cell(n_layers - 1 - layer, head)
        picture.draw.rectangle((cx, cy, cx + cell_w - 1, cy + cell_h - 1), outline=MARK, width=2)
        picture.text(x + label_w, listed + rank * line, f"{rank}. L{layer}H{head}  {table[layer, head]:.2f}")
    return grid


def roles_canvas(roles: dict[str, Any], title: str) -> tuple[canvas.Canvas, dict[str, canvas.Grid]]:
    """The 2 x 2 panels of one model's head roles, the causal check under them; returns the picture and
    where each measured role's cells lie."""
    n_layers, n_heads = int(roles["n_layers"]), int(roles["n_heads"])
    _, _, _, panel_w, panel_h = _panel_size(n_layers, n_heads)
    width = max(2 * panel_w + 12, 560)
    inputs = roles.get("inputs", {})
    note = (f"Rows = layers (0 at the bottom), columns = heads; colour = the share of a head's attention that goes "
            f"where the role says, 0 to 1. Measured on a fixed natural text and {inputs.get('n_repeats', '?')} seeded "
            f"sequences of {inputs.get('repeat_len', '?')} random tokens repeated twice (induction on those only). "
            f"Labels elsewhere name a head's strongest role at or over "
            + ", ".join(f"{ROLES[r]} {t:g}" for r, t in roles.get("label_thresholds", {}).items()) + ".")
    causal = causal_sentence(roles)
    line = canvas.line_height()
    note_lines = canvas.wrapped_lines(note, width - 12)
    causal_lines = canvas.wrapped_lines(causal, width - 12)
    height = 10 + canvas.line_height(canvas.TITLE_PX) + note_lines * line + 2 * panel_h + causal_lines * line + 24
    picture = canvas.Canvas(width, height)
    picture.text(6, 4, canvas.fit_text(title, width - 12, canvas.TITLE_PX), canvas.TITLE_PX)
    y0 = picture.wrap(6, 6 + canvas.line_height(canvas.TITLE_PX), note, width - 12) + 6
    grids = {}
    for slot, role in enumerate(ROLES):
        table = roles["scores"].get(role)
        grid = _panel(picture, 6 + (slot % 2) * panel_w, y0 + (slot // 2) * panel_h, role,
                      None if table is None else np.asarray(table, dtype=np.float64), n_layers, n_heads)
        if grid is not None:
            grids[role] = grid
    picture.wrap(6, y0 + 2 * panel_h + 6, causal, width - 12, color=canvas.TEXT)
    return picture, grids


def roles_data(roles: dict[str, Any]) -> dict[str, Any]:
    """The JSON beside the picture: every score drawn, the top heads, the causal check, each head's label."""
    n_layers, n_heads = int(roles["n_layers"]), int(roles["n_heads"])
    keys = ("model", "model_id", "random_weights", "causal", "n_layers", "n_heads", "roles", "definitions",
            "label_thresholds", "scores", "top", "causal_check", "inputs")
    data = {key: roles.get(key) for key in keys}
    data["labels"] = [[head_label(roles, layer, head) for head in range(n_heads)] for layer in range(n_layers)]
    return data


def draw_head_roles(roles: dict[str, Any]) -> Image.Image:
    """The figure of one model's head roles."""
    title = token_label(f"head roles · {roles.get('model', '?')} · what each attention head does", max_chars=200)
    return roles_canvas(roles, title)[0].finish()


@register_figure(scope="model", formats=("png", "json"))
def head_roles(caches: Sequence[Cache]) -> dict[str, Any]:
    """Head roles: previous-token, duplicate-token, induction and first-token scores per head, top heads, the causal check."""
    roles = roles_for(caches[0])
    return {"png": draw_head_roles(roles), "json": roles_data(roles)}
