// What to run when a corpus view (Neurons, Compare prompts, Corpus PCA) has nothing to show. The
// server writes the commands, with this save path, its models and prompts file filled in
// (lens_pipeline/viewer/next_steps.py, GET /api/next_steps); this module only shows them.
import { api } from "./data.js";
import { el } from "./util.js";

function copyButton(text) {
  const button = el("button", { type: "button", class: "secondary copy", text: "Copy" });
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch (error) {
      button.textContent = "Select the text to copy it";
    }
  });
  return button;
}

export function nextSteps(answer) {
  return el("div", { class: "next-steps", dataset: { view: answer.view } },
    el("p", { class: "next-reason", text: answer.reason }),
    el("ol", {}, answer.steps.map((step) => el("li", { class: step.optional ? "optional" : null },
      el("p", { text: step.what }),
      step.example.length ? el("pre", { class: "example", text: step.example.join("\n") }) : null,
      step.command ? el("div", { class: "command" }, el("pre", {}, el("code", { text: step.command })), copyButton(step.command)) : null))));
}

// The next steps of a corpus view as a page, or null when the view has something to show.
export async function emptyView(title, view, model) {
  const answer = await api("next_steps", { view, model });
  return answer.ready ? null : el("div", { class: "page" }, el("h1", { text: title }), nextSteps(answer));
}
