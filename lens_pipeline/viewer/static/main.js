// The viewer's page as the server serves it: answers from its HTTP API, the index followed live.
import { start } from "./app.js";
import { el } from "./util.js";

// The corpus views (lens_pipeline/viewer/corpus.py answers them) get tabs on the server's page only: a
// static export or a notebook widget has no corpus endpoints.
document.querySelector("nav.tabs").append(
  el("a", { href: "#view=neurons", dataset: { tab: "neurons" }, text: "Neurons" }),
  el("a", { href: "#view=phrasings", dataset: { tab: "phrasings" }, text: "Compare prompts" }),
  el("a", { href: "#view=pca", dataset: { tab: "pca" }, text: "Corpus PCA" }));
start({ live: true });
