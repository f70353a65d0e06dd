"""What to run when a corpus view (Neurons, Compare prompts, Corpus PCA) has nothing to show: the
next commands, exact and copy-pasteable, with this save path, its models, the prompts file its
caches were made from (their meta's `prompt_source`) and their settings filled in
(GET /api/next_steps?view=neurons|phrasings|pca[&model]). The one place these commands are
written: the page shows them as they come.

What each view needs: Neurons, a shared neuron basis in the current caches (activations
--neuron-basis variance) and the dashboards built from them (python -m lens_pipeline.corpus);
Corpus PCA, the same built with --pca; Compare prompts, prompts of a `group` (or a `pair`) in the
prompts file (lens_pipeline/capture/prompts.py check_groups), compared as they are (the neurons
part needs the shared basis too). The figures of the same views (neuron_dashboards,
phrasing_comparison, corpus_token_pca) are opt-in figures for the grid, not needed by the views.
Rerunning activations with other settings makes those caches current, so the figures stage then
redraws the figures drawn from the old ones. The activations flags are the ones that give the
current caches' settings again (checked by parsing them back with the activations command line),
so a rerun keeps the logit lens and every other setting; the command serving the viewer hands that
rule down (the viewer imports no command).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import threading
from pathlib import Path
from typing import Any, Callable

from lens_pipeline.store.cache import ExtractSettings, load
from lens_pipeline.viewer.live_index import IndexView, LiveIndex
from lens_pipeline.viewer.params import Params
from lens_pipeline.viewer.rows import recorded_settings

VIEWS = ("neurons", "phrasings", "pca")
FIGURES = {"neurons": "neuron_dashboards", "phrasings": "phrasing_comparison", "pca": "corpus_token_pca"}
SHARED_BASIS = "variance"  # the basis the commands ask for (activations --neuron-basis)
GROUP_EXAMPLE = ['{"text": "The capital of France is", "group": "capitals"}',
                 '{"text": "The capital of Italy is", "group": "capitals"}']


def command(module: str, *args: str) -> str:
    return " ".join(["python", "-m", f"lens_pipeline.{module}", *map(shlex.quote, args)])


def shown_path(path: Path) -> str:
    """A path as typed where the viewer runs: relative to the current folder when inside it."""
    try:
        return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except ValueError:
        return str(path)


def model_options(row: dict[str, Any]) -> list[str] | None:
    """--model (and --random-weights) naming the model a cache row was made with, checked as the
    activations stage resolves names; None when no name found here gives its model id."""
    from lens_pipeline.capture.models import ModelLoadError, resolve_source

    model_id, random = str(row.get("model_id", "")), bool(row.get("random_weights"))
    parts = model_id.split(":")
    # The likeliest name first: a random model's shape (its id's second part; trying its display name
    # would import transformers), else the display name, else the id's location (hub id, folder).
    names = [parts[1] if len(parts) > 1 else ""] if random else [str(row.get("model", "")), model_id.split(":", 1)[-1]]
    for name in dict.fromkeys(names):
        try:
            if name and resolve_source(name, random).model_id == model_id:
                return ["--model", name] + (["--random-weights"] if random else [])
        except (ModelLoadError, OSError, ValueError, ImportError):
            continue
    return None


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the commands need to know of one model's current caches."""

    name: str
    options: tuple[str, ...] | None  # --model ... (None: not found)
    prompts: str | None  # the prompts file its newest current cache was made from
    settings: ExtractSettings
    groups: int  # prompt groups (or pairs) of two or more cached prompts
    dashboards: bool = False  # corpus/<model>/neurons.json built
    pca: bool = False  # corpus/<model>/pca.json built

    @property
    def shared(self) -> bool:
        return self.settings.neuron_basis != "prompt" or bool(self.settings.neuron_ids)


def _prompts_file(root: Path, row: dict[str, Any]) -> str | None:
    try:
        with load(root / str(row.get("path", ""))) as cache:
            source = str(cache.meta.get("prompt_source") or "")
    except Exception:  # a missing or damaged cache: its prompts file stays unknown
        return None
    return source.rsplit(":", 1)[0] or None


def model_facts(root: Path, view: IndexView) -> list[ModelFacts]:
    """Per model of the current caches (the corpus files left unchecked: see NextSteps.facts)."""
    from lens_pipeline.corpus.compare import group_name

    by_model: dict[str, list[dict[str, Any]]] = {}
    for (model, _), row in view.current.items():
        by_model.setdefault(model, []).append(row)
    facts = []
    for model, rows in sorted(by_model.items()):
        newest = max(rows, key=lambda r: str(r.get("selected") or r.get("created") or ""))
        members: dict[str, int] = {}
        for row in rows:
            name = group_name(row.get("prompt_metadata") or {})
            if name:
                members[name] = members.get(name, 0) + 1
        options = model_options(newest)
        facts.append(ModelFacts(model, tuple(options) if options else None, _prompts_file(root, newest),
                                recorded_settings(newest.get("params") or {}), sum(n > 1 for n in members.values())))
    return facts


def _step(what: str, line: str | None = None, optional: bool = False, example: list[str] | None = None) -> dict[str, Any]:
    return {"what": what, "command": line, "optional": optional, "example": example or []}


FlagsFor = Callable[[ExtractSettings], "list[str] | None"]


class NextSteps:
    """GET /api/next_steps: whether a corpus view has something to show and, if not, the commands.
    `flags_for`: the activations options that make caches with given settings (the activations
    command's own rule, lens_pipeline.activations.cli.flags_for, handed down by the command that
    serves the viewer); without it, the commands name only the neuron basis."""

    def __init__(self, root: Path, live: LiveIndex, flags_for: FlagsFor | None = None):
        self.root, self.index, self.flags_for = root, live, flags_for
        self._facts: tuple[int, list[ModelFacts]] | None = None
        self._lock = threading.Lock()

    def facts(self, view: IndexView) -> list[ModelFacts]:
        with self._lock:  # per index version (the corpus files are checked each time: the corpus stage adds them)
            if self._facts is None or self._facts[0] != view.version:
                self._facts = (view.version, model_facts(self.root, view))
            return [dataclasses.replace(f, **self._corpus(f.name)) for f in self._facts[1]]

    def _corpus(self, model: str) -> dict[str, bool]:
        from lens_pipeline.corpus.neurons import corpus_dir

        folder = corpus_dir(self.root, model)
        return {"dashboards": (folder / "neurons.json").is_file(), "pca": (folder / "pca.json").is_file()}

    def answer(self, params: Params) -> dict[str, Any]:
        name = params.choice("view", VIEWS, "neurons")
        model = params.text("model")
        every = self.facts(self.index.view())
        facts = [f for f in every if f.name == model] if model else every
        return self.steps(name, facts, several=len(every) > 1)

    def steps(self, name: str, facts: list[ModelFacts], several: bool) -> dict[str, Any]:
        save = shown_path(self.root)
        ready = {"neurons": any(f.dashboards for f in facts), "pca": any(f.pca for f in facts),
                 "phrasings": any(f.groups for f in facts)}[name]
        answer: dict[str, Any] = {"view": name, "ready": ready, "save_path": save, "steps": []}
        if ready:
            answer["reason"] = ""
            return answer
        if not facts:
            answer["reason"] = "This save path has no prompt caches yet."
            answer["steps"] = [_step("Cache prompts with one neuron basis shared by every prompt:",
                                     command("activations", "--save-path", save, "--neuron-basis", SHARED_BASIS))]
            return answer
        models = ["--model", facts[0].name] if several and len(facts) == 1 else []
        rerun = [f for f in facts if not f.shared] if name != "phrasings" else facts
        steps = []
        if name == "phrasings":
            files = sorted({f.prompts for f in facts if f.prompts}) or ["your prompts file"]
            answer["reason"] = ("No prompt groups: the comparison shows prompts that share a \"group\" field "
                                "(or a \"pair\" field naming another line's \"id\") in the prompts file.")
            steps.append(_step(f"Give the lines to compare one \"group\" name in {', '.join(files)}, e.g.:",
                               example=GROUP_EXAMPLE))
        elif name == "neurons" or not any(f.dashboards for f in facts):
            answer["reason"] = ("No neuron dashboards: they are built over one neuron basis shared by every prompt "
                                "of a model" + ("; these caches each keep their own prompt's neurons." if rerun else "."))
        else:
            answer["reason"] = "No corpus PCA yet: the corpus stage makes it with --pca."
        steps += [self._activations(f, save, force=name == "phrasings") for f in rerun]
        if name != "phrasings":
            steps.append(_step("Build the neuron dashboards" + (" and the token PCA" if name == "pca" else "") + ":",
                               command("corpus", "--save-path", save, *models, *(["--pca"] if name == "pca" else []))))
        if rerun:
            steps.append(_step("Redraw the figures drawn from the old caches:", command("figures", "--save-path", save)))
        steps.append(_step("Also as a figure in the grid (optional):",
                           command("figures", "--save-path", save, *models, "--figures", FIGURES[name]), optional=True))
        answer["steps"] = steps
        return answer

    def _activations(self, facts: ModelFacts, save: str, force: bool) -> dict[str, Any]:
        wanted = facts.settings
        if not facts.shared:
            wanted = dataclasses.replace(wanted, neuron_basis=SHARED_BASIS,
                                         n_neurons=wanted.n_neurons or ExtractSettings.n_neurons)
        flags = self.flags_for(wanted) if self.flags_for else None
        what = (f"Recompute {facts.name}'s caches" + ("" if facts.shared else " with one neuron basis shared by every prompt")
                + (" (--force: the prompts' new fields are read only for prompts it runs)" if force else "") + ":")
        if flags is None:
            what += " (add the options your caches were made with)"
            flags = ["--neuron-basis", SHARED_BASIS]
        line = command("activations", *(facts.options or ("--model", "MODEL")), "--prompts", facts.prompts or "PROMPTS.jsonl",
                       "--save-path", save, *flags, *(["--force"] if force else []))
        return _step(what, line)
