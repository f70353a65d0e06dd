// lens viewer: one page of ES modules, no libraries, no build step, nothing from the network.
// This module routes the URL hash to a view (one module each) and watches the index for new rows.
// Colours, value kinds, token display strings and labels come from the server (GET /api/display
// and each answer); the modules only draw them.
import { SUMMARY, api, loadFacts, loadSummary } from "./data.js";
import { compare } from "./compare.js";
import { figure } from "./figure.js";
import { grid } from "./grid.js";
import { head } from "./head.js";
import { knit } from "./knit.js";
import { prompts } from "./prompts.js";
import { tokens } from "./tokens.js";
import { el, errorBox, hideTooltip, readHash, showBanner } from "./util.js";

const POLL_MS = 5000;
const views = { grid, prompts, figure, knit, head, tokens, compare };
let current = { name: null, cleanup: null, token: null };

async function route() {
  const params = readHash();
  const name = views[params.get("view")] ? params.get("view") : "grid";
  document.querySelectorAll("[data-tab]").forEach((a) => a.classList.toggle("active", a.dataset.tab === name));
  if (current.cleanup) current.cleanup();
  const token = Symbol(name);
  current = { name, cleanup: null, token };
  hideTooltip();
  const main = document.getElementById("main");
  // Re-rendering replaces the filter inputs: keep the one being typed in focused.
  const active = document.activeElement;
  const focus = active && main.contains(active) && active.name ?
    { name: active.name, start: active.selectionStart, end: active.selectionEnd } : null;
  try {
    await Promise.all([loadFacts(), SUMMARY ? null : loadSummary()]);
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
      el("p", {}, el("a", { href: "#view=grid", text: "Back to the figures" }))));
  }
  document.title = `lens viewer · ${name}`;
}

// Live: the server re-reads the index as it grows; offer the new rows without losing the view.
async function poll() {
  if (document.hidden || !SUMMARY) return;
  try {
    const fresh = await api("summary");
    const button = document.getElementById("new-rows");
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

document.getElementById("new-rows").addEventListener("click", async (event) => {
  event.target.hidden = true;
  await loadSummary();
  route();
});
window.addEventListener("hashchange", route);
setInterval(poll, POLL_MS);
route();
