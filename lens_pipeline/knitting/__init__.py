"""Knitting patterns from model internals: pure logic (numpy, matplotlib, Pillow; no model).

Modules, one job each:
  grid          Grid/Colour/Gauge data model, colour schemes, block scaling, quantisation,
                the stranded 2-colours-per-row adjustment
  mapping       the selectable `source` mappings from cache arrays to colour levels
  checks        floats, colours and runs per row, Craft Yarn Council difficulty
  instructions  written pattern (row lines in working order, Markdown and plain text)
  chart         the RS chart as SVG and PDF (one shared layout)
  yarns         the yarn path: joins, carries, catches, breaks, floats as knitted, bobbins, ends
  exports       grid.json, grid.csv, the AYAB PNG (and what AYAB does with it)
  knitout       the knitout program for V-bed machines
  survey        levels, floats, ends and the picture over a save path's patterns (a command)
  bundle        every output file of one pattern

The registered figure lives in lens_pipeline.draw.builtins.knitting.
"""

from .bundle import pattern_files
from .chart import chart_pdf, chart_svg
from .checks import LevelMetrics, check_grid, colour_runs, difficulty, float_limit, row_floats
from .exports import ayab_image, grid_csv, grid_json
from .grid import SCHEMES, Colour, Gauge, Grid, axis_scale, block_scale, limit_colours_per_row, palette_for, quantise
from .instructions import instruction_lines, pattern_lines, pattern_markdown, pattern_text, row_line
from .knitout import knitout_program
from .mapping import SOURCES, source_levels
from .yarns import YarnPlan, plan_yarns

__all__ = [
    "SCHEMES", "SOURCES", "Colour", "LevelMetrics", "Gauge", "Grid", "axis_scale", "ayab_image", "block_scale",
    "chart_pdf", "chart_svg", "check_grid", "colour_runs", "difficulty", "float_limit",
    "YarnPlan", "grid_csv", "grid_json", "instruction_lines", "knitout_program", "limit_colours_per_row",
    "pattern_lines", "plan_yarns",
    "palette_for", "pattern_files", "pattern_markdown", "pattern_text", "quantise", "row_floats",
    "row_line", "source_levels",
]
