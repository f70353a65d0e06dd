"""The viewer's ES modules (lens_pipeline/viewer/static) as one script, with no build step and no node:
for a notebook widget (anywidget takes one ES module string) and a static export (a page opened
from file:// may not load module files).

Each module becomes a function scope in dependency order; its `import { a, b } from "./m.js"`
lines read the names from that module's scope, and its `export` keywords are dropped and the
names returned. The whole is one factory, `lensViewer()`: each call makes fresh module instances,
so two widgets on one notebook page keep their own state. Only these import and export forms are
allowed; anything else fails here, naming the line, rather than in a browser.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
IMPORT = re.compile(r'import \{([\w\s,]*)\} from "\./([\w-]+)\.js";')
EXPORT = re.compile(r"export (?:async function|function|class|const) (\w+)")


class BundleError(ValueError):
    pass


def _scope(name: str) -> str:
    return "$" + re.sub(r"\W", "_", name)


def _module(name: str) -> tuple[list[tuple[str, list[str]]], list[str], str]:
    """(imports as (module, names), exported names, body without import lines or export keywords)."""
    imports, exports, body = [], [], []
    for number, line in enumerate((STATIC_DIR / f"{name}.js").read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("import"):
            match = IMPORT.fullmatch(line.strip())
            if not match:
                raise BundleError(f"static/{name}.js:{number}: only `import {{ a, b }} from \"./m.js\";` on one line "
                                  f"can be bundled: {line.strip()}")
            imports.append((match.group(2), [n.strip() for n in match.group(1).split(",") if n.strip()]))
            continue
        if line.startswith("export"):
            match = EXPORT.match(line)
            if not match:
                raise BundleError(f"static/{name}.js:{number}: only `export function|class|const NAME` can be bundled "
                                  f"(a module's `let` would not stay live): {line.strip()}")
            exports.append(match.group(1))
            line = line[len("export "):]
        body.append(line)
    return imports, exports, "\n".join(body)


def _order(entry: str) -> list[str]:
    """The modules `entry` needs, each after the ones it imports."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise BundleError(f"static/{name}.js is part of an import cycle")
        visiting.add(name)
        for dependency, _ in _module(name)[0]:
            visit(dependency)
        visiting.discard(name)
        order.append(name)

    visit(entry)
    return order


@functools.cache
def bundle(entry: str) -> str:
    """`function lensViewer() {...}`: the modules `entry` (a name in static/, no .js) needs; returns
    the entry's exports. Evaluating the factory runs each module's top level once, as importing would."""
    parts = ["function lensViewer() {", '"use strict";']
    for name in _order(entry):
        imports, exports, body = _module(name)
        parts.append(f"// ---- static/{name}.js")
        parts.append(f"const {_scope(name)} = (() => {{")
        parts.extend(f"const {{ {', '.join(names)} }} = {_scope(module)};" for module, names in imports)
        parts.append(body)
        parts.append(f"return {{ {', '.join(exports)} }};")
        parts.append("})();")
    parts.append(f"return {_scope(entry)};")
    parts.append("}")
    return "\n".join(parts) + "\n"


@functools.cache
def stylesheet() -> str:
    return (STATIC_DIR / "style.css").read_text(encoding="utf-8")
