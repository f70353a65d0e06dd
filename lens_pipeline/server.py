"""The web viewer: a static page and a small read-only JSON API over one save path.

    python -m lens_pipeline.server --save-path attn_data [--host 127.0.0.1] [--port 8000]

The page (lens_pipeline/viewer/static: index.html, style.css and ES modules, main.js first; nothing from
the network, no build step) browses the figure rows of SAVE_PATH/index.jsonl and draws attention
heads and token values from the exact numbers in the cache files, with the colours and labels the
API sends (lens_pipeline/draw/display.py). The index is re-read when it changes (only the appended tail).

Routes: /api/... (JSON, read-only; listed with their parameters in lens_pipeline/viewer/api.py),
/files/<path> (a file under the save path, never outside it), / and /static/... (the page).

Safe by default: binds 127.0.0.1, answers only loopback Host names when bound there (DNS
rebinding), resolves every file path and refuses what lands outside the save path, and sends a
Content-Security-Policy that lets the page load nothing but itself.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import mimetypes
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from lens_pipeline.draw.interactive import VIEW as INTERACTIVE_VIEW
from lens_pipeline.store import index
from lens_pipeline.version import __version__
from lens_pipeline.viewer import ApiError, ViewerApi, resolve_inside

STATIC_DIR = Path(__file__).parent / "viewer" / "static"
DEFAULT_PORT = 8000
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)
# Saved files are data, never a page: a sandboxed origin with no script, even if one is HTML/SVG.
FILE_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"
# An interactive figure's page (lens_pipeline.draw.interactive; its row's view says so): the scripts
# of the save path may run, none inline, nothing fetched, in a sandbox without the viewer's origin.
INTERACTIVE_CSP = ("default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' data: blob:; "
                   "sandbox allow-scripts")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
TEXT_TYPES = {".md": "text/markdown", ".txt": "text/plain", ".k": "text/plain", ".csv": "text/csv", ".json": "application/json",
              ".jsonl": "application/jsonl", ".js": "text/javascript", ".css": "text/css", ".html": "text/html",
              ".svg": "image/svg+xml"}


# --------------------------------------------------------------------------- HTTP


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: ViewerApi, log_requests: bool = False):
        self.api = api
        self.log_requests = log_requests
        self.allowed_hosts = _allowed_hosts(address[0])
        super().__init__(address, ViewerHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"


def flags_for(wanted: Any) -> list[str] | None:
    """The activations command's options for cache settings `wanted` (its own rule; imported on use,
    so the viewer starts without the activations stage's imports)."""
    from lens_pipeline.activations.cli import flags_for as rule

    return rule(wanted)


def _allowed_hosts(host: str) -> set[str] | None:
    """Host header names to accept: loopback names when bound to loopback, anything otherwise."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    return (LOOPBACK_NAMES | {host}) if loopback else None


class ViewerHandler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = f"lens_pipeline/{__version__}"
    sys_version = ""

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _refuse_method(self) -> None:
        self._send_json(405, {"error": f"method {self.command} not allowed: the viewer is read-only (GET)"}, True,
                        extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _respond(self, send_body: bool) -> None:
        try:
            if not self._host_allowed():
                raise ApiError(403, "refused: unexpected Host header (open the viewer at its 127.0.0.1 address)")
            parts = urlsplit(self.path)
            route = parts.path
            if route.startswith("/api/"):
                self._send_json(200, self.server.api.handle(route, parts.query), send_body)
            elif route.startswith("/files/"):
                relpath = unquote(route[len("/files/"):], errors="strict")
                pages, scripts = interactive_files(self.server.api)
                csp = INTERACTIVE_CSP if relpath in pages else FILE_CSP
                # The scripts those pages load: their sandbox is an origin of its own, so same-origin would refuse them.
                corp = "cross-origin" if relpath in scripts else "same-origin"
                self._send_file(resolve_inside(self.server.api.root, relpath), csp, send_body, corp)
            elif route in ("/", "/index.html"):
                self._send_file(STATIC_DIR / "index.html", PAGE_CSP, send_body)
            elif route.startswith("/static/"):
                self._send_file(resolve_inside(STATIC_DIR.resolve(), unquote(route[len("/static/"):])), PAGE_CSP, send_body)
            elif route == "/favicon.ico":
                self._send_file(STATIC_DIR / "favicon.svg", PAGE_CSP, send_body)
            else:
                raise ApiError(404, f"nothing at {route}")
        except ApiError as error:
            self._send_json(error.status, {"error": error.message, "status": error.status}, send_body)
        except UnicodeDecodeError:
            self._send_json(400, {"error": "the path is not valid percent-encoded UTF-8", "status": 400}, send_body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser moved on (scrolling past a lazy image); nothing to answer
        except Exception as error:  # one bad request must not take the viewer down
            self.log_error("internal error on %s: %r", self.path, error)
            self._send_json(500, {"error": f"internal error: {type(error).__name__}: {error}", "status": 500}, send_body)

    def _host_allowed(self) -> bool:
        allowed = self.server.allowed_hosts
        if allowed is None:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in allowed

    def _common_headers(self, csp: str, corp: str = "same-origin") -> None:
        self.send_header("Content-Security-Policy", csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cross-Origin-Resource-Policy", corp)

    def _send_json(self, status: int, payload: Any, send_body: bool, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self._common_headers(PAGE_CSP)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _send_file(self, path: Path, csp: str, send_body: bool, corp: str = "same-origin") -> None:
        try:
            stat = path.stat()
        except OSError:
            raise ApiError(404, f"file {path.name} is missing (the index names it, but it is not on disk)") from None
        if not path.is_file():
            raise ApiError(404, f"{path.name} is not a file")
        etag = '"' + hashlib.sha1(f"{stat.st_mtime_ns}-{stat.st_size}".encode()).hexdigest()[:16] + '"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        data = path.read_bytes() if send_body else b""
        self.send_response(200)
        self.send_header("Content-Type", _content_type(path))
        self.send_header("Content-Length", str(stat.st_size if not send_body else len(data)))
        self.send_header("ETag", etag)
        self.send_header("Cache-Control", "no-cache")  # revalidate: figures are rewritten in place
        self._common_headers(csp, corp)
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log_requests:
            super().log_message(format, *args)

    def log_error(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"lens_pipeline.server: {format % args}\n")


def interactive_files(api: ViewerApi) -> tuple[frozenset[str], frozenset[str]]:
    """(pages, scripts): the HTML files of ok figure rows whose view is interactive (the only files
    served with INTERACTIVE_CSP) and the shared scripts those rows record under `assets`."""
    view = api.index.view()

    def collect() -> list[Any]:
        rows = [row for row in view.figures if row.get("view") == INTERACTIVE_VIEW and row.get("status") == "ok"]
        entries = lambda key: (e for row in rows for e in row.get(key) or [] if isinstance(e, dict))  # noqa: E731
        return [(frozenset(str(e.get("path")) for e in entries("files") if str(e.get("path", "")).endswith(".html")),
                 frozenset(str(e.get("path")) for e in entries("assets")))]

    return view.memo(("interactive files",), collect)[0]


def _content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    kind = TEXT_TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    text = kind.startswith("text/") or kind in ("application/json", "application/jsonl", "image/svg+xml")
    return f"{kind}; charset=utf-8" if text else kind


def make_server(save_path: str | os.PathLike[str], host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                log_requests: bool = False) -> ViewerServer:
    """A viewer server bound to (host, port), not yet serving; port 0 picks a free port.

    Run it with `server.serve_forever()` (e.g. on a thread) and stop it with `server.shutdown()`."""
    save_path = Path(save_path)
    if not save_path.is_dir():
        raise FileNotFoundError(f"save path {save_path} does not exist; run python -m lens_pipeline.activations first")
    api = ViewerApi(save_path, flags_for=flags_for)
    api.index.view()  # read the index and build the colour tables now, so the first page request does not pay
    api.handle("/api/display", "")
    return ViewerServer((host, port), api, log_requests)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lens_pipeline.server",
        description="Browse the caches and figures of a save path in a web page (read-only; works offline).",
    )
    parser.add_argument("--save-path", default="attn_data", help="folder with index.jsonl (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s, this machine only; 0.0.0.0 exposes your data "
                        "to the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s; 0 = any free port)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"error: --port {args.port} is not a port number (0..65535)", file=sys.stderr)
        return 2
    try:
        server = make_server(args.save_path, args.host, args.port, args.verbose)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port} ({error.strerror or error}); "
              "pass --port 0 for any free port", file=sys.stderr)
        return 2
    summary = server.api.handle("/api/summary", "")
    if server.allowed_hosts is None:
        print(f"warning: listening on {args.host}: anyone who can reach this machine can read {args.save_path}",
              file=sys.stderr)
    if not summary["index_exists"]:
        print(f"note: {index.index_path(args.save_path)} does not exist yet; the page fills in as stages write it",
              file=sys.stderr)
    print(f"lens viewer: {summary['n_caches']} cached prompt(s), {summary['n_figures']} figure(s) from "
          f"{args.save_path} at {server.url}  (Ctrl-C to stop)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
