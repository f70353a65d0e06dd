"""The README's commands work as written, from a fresh copy of the repository's data.

Every fenced code block of README.md is read: ```bash blocks line by line as shell commands,
```python blocks as one script each; blocks without a language (the pipeline diagram) are text.
They run in README order (the tour builds on itself) with cwd = a temporary folder holding a copy
of data/, and the virtualenv's bin/ first on PATH, so `python -m lens_pipeline...` is the .venv's.

Which commands run: all of them ("cheap": the tour is sized for a test, data/small.jsonl and the
embedded SmolLM2, about 90 s in all), except
- the ones named in SKIPPED, with the reason (a test fails when a name there is no longer in the
  README, so nothing is skipped silently and nothing stale stays listed), and
- the viewer, which runs until stopped: it is started as written plus `--port 0` (any free port;
  8000 may be taken), asked for `/`, and stopped with Ctrl-C (SIGINT), which must exit 0.
A command of the README that takes minutes belongs in SKIPPED with its reason.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
VENV_BIN = REPO / ".venv" / "bin" if (REPO / ".venv" / "bin" / "python").exists() else Path(sys.executable).parent

SKIPPED = {
    "make run": "creates .venv (about 6 minutes the first time) and caches the 30 quotes; the tour runs the same "
                "two stages on data/small.jsonl",
    "make test": "runs this test suite (about 30 minutes)",
    "python -m lens_pipeline.activations --prompts data/causal.jsonl --save-path attn_data --patch resid_pre,heads "
    "--ablate heads,mlp --attribution-patching": "patches four pairs (minutes); tests/test_causal.py runs the same "
                                                  "flags from the command line on two of them",
    ". .venv/bin/activate": "changes the calling shell only; these commands already run with the .venv's bin/ first "
                            "on PATH",
}
SERVER = "python -m lens_pipeline.server"
COMMAND_TIMEOUT_S = 600


@dataclass
class Snippet:
    kind: str  # "shell" | "python"
    text: str  # as written in the README
    line: int

    @property
    def bare(self) -> str:
        """The command without its trailing comment: how SKIPPED names it."""
        return re.sub(r"\s+#.*$", "", self.text).strip() if self.kind == "shell" else self.text


def readme_snippets(markdown: str = README) -> list[Snippet]:
    snippets, lang, start, body = [], None, 0, []
    for number, line in enumerate(markdown.splitlines(), start=1):
        fence = re.match(r"^\s*```\s*(\w*)", line)
        if fence and lang is None:
            lang, start, body = fence.group(1) or "text", number, []
            continue
        if fence:
            if lang in ("bash", "sh", "shell"):
                command, first = "", 0
                for i, part in enumerate(body):  # one command a line; a trailing \ continues it
                    first = first or start + 1 + i
                    command += part[:-1] + " " if part.endswith("\\") else part
                    if not part.endswith("\\"):
                        if command.strip() and not command.strip().startswith("#"):
                            snippets.append(Snippet("shell", command.strip(), first))
                        command, first = "", 0
            elif lang == "python":
                snippets.append(Snippet("python", "\n".join(body) + "\n", start + 1))
            lang = None
            continue
        if lang is not None:
            body.append(line)
    return snippets


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    env.setdefault("HF_HUB_OFFLINE", "1")  # tests never wait on the hub
    env.pop("PYTHONPATH", None)
    return env


def run_shell(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=environment(), capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)


def run_python(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["python", "-"], input=script, cwd=cwd, env=environment(), capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)


def run_server(command: str, cwd: Path) -> str:
    """Start the viewer as written (on any free port), GET /, stop it with Ctrl-C; '' when all went well."""
    process = subprocess.Popen(["bash", "-c", f"exec {command} --port 0"], cwd=cwd, env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()  # type: ignore[union-attr]
    said, url, deadline = [], None, time.monotonic() + 60
    try:
        while url is None and time.monotonic() < deadline and process.poll() is None:
            try:
                said.append(lines.get(timeout=0.5))
            except queue.Empty:
                continue
            found = re.search(r"(http://[\w.:]+/)", said[-1])
            url = found.group(1) if found else None
        if url is None:
            return f"no URL within 60 s; stderr: {''.join(said)[-2000:]}"
        with urllib.request.urlopen(url, timeout=30) as response:
            page = response.read().decode("utf-8", "replace")
            if response.status != 200 or "<html" not in page.lower():
                return f"GET {url}: status {response.status}, {page[:200]!r}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            return "did not stop within 30 s of Ctrl-C"
    return "" if code == 0 else f"exit {code} after Ctrl-C; stderr: {''.join(said)[-2000:]}"


def test_the_readme_has_its_tour() -> None:
    shell = [s.bare for s in readme_snippets() if s.kind == "shell"]
    for stage in ("activations", "figures", "server", "export"):
        assert any(c.startswith(f"python -m lens_pipeline.{stage}") for c in shell), f"no {stage} command in the README"
    assert any(s.kind == "python" for s in readme_snippets()), "no notebook snippet in the README"


def test_every_skip_is_named_and_still_in_the_readme() -> None:
    commands = {s.bare for s in readme_snippets() if s.kind == "shell"}
    stale = [name for name in SKIPPED if name not in commands]
    assert not stale, f"SKIPPED names commands the README no longer has: {stale}"
    assert all(reason.strip() for reason in SKIPPED.values())


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path: Path) -> None:
    shutil.copytree(REPO / "data", tmp_path / "data")
    failures, ran = [], []
    for snippet in readme_snippets():
        if snippet.kind == "shell" and snippet.bare in SKIPPED:
            continue
        started = time.monotonic()
        if snippet.kind == "shell" and snippet.bare.startswith(SERVER):
            problem = run_server(snippet.bare, tmp_path)
        else:
            result = (run_shell if snippet.kind == "shell" else run_python)(snippet.text, tmp_path)
            problem = "" if result.returncode == 0 else f"exit {result.returncode}; stderr: {result.stderr[-3000:]}"
        ran.append(f"README.md:{snippet.line} ({time.monotonic() - started:.1f} s) {snippet.bare.splitlines()[0]}")
        if problem:
            failures.append(f"README.md:{snippet.line}: {snippet.text.strip()}\n  {problem}")
    print("\n".join(ran))
    assert not failures, "\n\n".join(failures)
    assert (tmp_path / "attn_data" / "site" / "index.html").is_file(), "the tour's export wrote no attn_data/site/index.html"
