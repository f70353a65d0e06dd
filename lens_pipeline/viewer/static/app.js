// lens viewer: one page of ES modules, no libraries, no build step, nothing from the network.
// This module routes the view state (the URL hash, or a widget's own) to a view (one module each)
// and, on the server page, watches the index for new rows. main.js starts it on the server's page,
// exported.js in a static export, widget.js in a notebook widget; each plugs in its data source.
// Colours, value kinds, token display strings and labels come from Python (the display facts and
// each answer); the modules only draw them.
import { SUMMARY, api, loadFacts, loadSummary, offers, summaryLoaded, useSource } from "./data.js";
import { cause } from "./cause.js";
import { compare } from "./compare.js";
import { figure } from "./figure.js";
import { grid } from "./grid.js";
import { head } from "./head.js";
import { knit } from "./knit.js";
import { neurons } from "./neurons.js";
import { overview } from "./overview.js";
import { pca } from "./pca.js";
import { phrasings } from "./phrasings.js";
import { predictions } from "./predictions.js";
import { prompts } from "./prompts.js";
import { tokens } from "./tokens.js";
import { why } from "./why.js";
import { byId, el, errorBox, hideTooltip, listen, readHash, setRoot, showBanner, useNavigator } from "./util.js";

const POLL_MS = 5000;
export const views = { grid, prompts, figure, knit, head, tokens, compare, overview, predictions, why, cause, neurons, phrasings,
  pca };

// Show the view the state names in `root`'s #main. `root`: this document, or a widget's shadow
// root; `source`: where answers come from (data.js); `navigator`: where the view state lives
// (util.js; the URL hash by default); `live`: poll the index summary and offer new rows.
export function start({ root = document, source = null, navigator = null, live = false, fallback = "grid" } = {}) {
  setRoot(root);
  if (source) useSource(source);
  if (navigator) useNavigator(navigator);
  let current = { name: null, cleanup: null, token: null };

  async function route() {
    const params = readHash();
    const name = views[params.get("view")] ? params.get("view") : fallback;
    root.querySelectorAll("[data-tab]").forEach((a) => a.classList.toggle("active", a.dataset.tab === name));
    if (current.cleanup) current.cleanup();
    const token = Symbol(name);
    current = { name, cleanup: null, token };
    hideTooltip();
    const main = byId("main");
    // Re-rendering replaces the filter inputs: keep the one being typed in focused.
    const active = root.activeElement;
    const focus = active && main.contains(active) && active.name ?
      { name: active.name, start: active.selectionStart, end: active.selectionEnd } : null;
    try {
      await Promise.all([loadFacts(), summaryLoaded() || !offers("summary") ? null : loadSummary()]);
      const cleanup = await views[name](main, params);
      if (current.token === token) current.cleanup = cleanup || null;
      else if (cleanup) cleanup();
      const again = focus && main.querySelector(`[name="${CSS.escape(focus.name)}"]`);
      if (again) {
        again.focus();
        if (focus.start !== null && again.setSelectionRange) again.setSelectionRange(focus.start, focus.end);
      }
    } catch (error) {
      if (current.token === token) main.replaceChildren(el("div", { class: "page" }, errorBox(error.message),
        offers("figures") ? el("p", {}, el("a", { href: "#view=grid", text: "Back to the figures" })) : null));
    }
    if (root === document) document.title = `lens viewer · ${name}`;
  }

  // Live: the server re-reads the index as it grows; offer the new rows without losing the view.
  async function poll() {
    if (document.hidden || !summaryLoaded()) return;
    try {
      const fresh = await api("summary");
      const button = byId("new-rows");
      if (fresh.version !== SUMMARY.version) {
        const figures = fresh.n_figures - SUMMARY.n_figures;
        const caches = fresh.n_caches - SUMMARY.n_caches;
        button.textContent = `Index updated (${figures >= 0 ? "+" : ""}${figures} figures, ${caches >= 0 ? "+" : ""}${caches} caches) · show`;
        button.hidden = false;
      }
      showBanner("");
    } catch (error) {
      showBanner(error.message);
    }
  }

  if (live) {
    byId("new-rows").addEventListener("click", async (event) => {
      event.target.hidden = true;
      await loadSummary();
      route();
    });
    setInterval(poll, POLL_MS);
  }
  listen(route);
  return route();
}
