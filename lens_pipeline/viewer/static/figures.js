// Figure rows as the server describes them: how each is shown (row.view; row.image, row.main and
// row.pattern name its files), its status (ok, stale, error, skipped) and a cache's settings.
import { el, errorBox, formatBytes, hashFor, headLabel } from "./util.js";

export function figureLink(row) {
  const view = row.view === "knitting" ? "knit" : "figure";
  return hashFor({ view, model: row.model, prompt: row.prompt_hash, function: row.function, layer: row.layer, head: row.head });
}

// The picture of a figure (its image file), or why there is none.
export function figureImage(row, className) {
  if (row.status === "skipped") {
    return el("div", { class: `figure-missing skipped ${className || ""}` }, el("strong", { text: "Skipped" }),
      el("span", { text: row.reason || "this figure does not apply here" }));
  }
  if (row.status === "error") {
    return el("div", { class: `figure-missing ${className || ""}` }, el("strong", { text: "Figure failed" }),
      el("span", { class: "error-line", text: row.error || "no error message recorded" }));
  }
  const box = el("div", { class: `figure-box ${className || ""}` });
  if (!row.image) {
    box.append(el("div", { class: "figure-missing" }, el("strong", { text: row.format || "file" }),
      el("span", { text: "not an image; open it below" })));
    return box;
  }
  const img = el("img", { src: row.image.url, alt: `${row.function} ${headLabel(row)}`, loading: "lazy", decoding: "async" });
  img.addEventListener("error", () => {
    box.replaceChildren(el("div", { class: "figure-missing" }, el("strong", { text: "Image unavailable" }),
      el("span", { text: `${row.image.path} is missing or unreadable` })));
  });
  box.append(img);
  return box;
}

export function staleBadge(row) {
  return row.status === "stale" ? el("span", { class: "badge stale-badge", title: row.reason, text: "stale" }) : null;
}

// Above a figure shown large: why it is stale, the error with its traceback to expand, or a note
// on it (e.g. in an export: what of its input the export lacks).
export function statusNote(row) {
  if (row.status === "stale") {
    return el("div", { class: "note stale-note", role: "status" }, el("strong", { text: "Stale: " }),
      row.reason || "drawn from another cache than the current one");
  }
  if (row.status === "error") {
    return el("div", {}, errorBox(row.error || "this figure failed"),
      row.traceback ? el("details", { class: "traceback" }, el("summary", { text: "Traceback" }),
        el("pre", { text: row.traceback })) : null);
  }
  if (row.status === "skipped") return el("p", { class: "note", text: `Skipped: ${row.reason || "this figure does not apply here"}` });
  if (row.note) return el("p", { class: "note figure-note", role: "status", text: row.note });
  return null;
}

export function fileList(row) {
  return el("ul", { class: "files" }, row.files.map((f) =>
    el("li", {}, el("a", { href: f.url, download: f.path.split("/").pop(), text: f.path.split("/").pop() }),
      el("span", { class: "muted", text: ` ${f.format || ""} ${formatBytes(f.bytes)}` }))));
}

export function figureCard(row) {
  const label = headLabel(row);
  return el("a", { class: `card status-${row.status}`, href: figureLink(row),
      dataset: { model: row.model, function: row.function, layer: row.layer ?? "", head: row.head ?? "", prompt: row.prompt_hash,
                 status: row.status } },
    figureImage(row, "thumb"),
    el("div", { class: "card-body" },
      el("div", { class: "card-title", title: row.function, text: row.function }),
      el("div", { class: "card-meta" }, label ? el("span", { class: "badge", text: label }) : null, staleBadge(row),
        el("span", { class: "muted small", text: row.model })),
      row.status === "stale" ? el("div", { class: "card-reason", text: row.reason }) : null,
      row.note ? el("div", { class: "card-note", text: row.note }) : null,
      row.text ? el("div", { class: "card-text", text: row.text }) : null));
}

// How a cache was made: the server's [label, value] pairs, as chips.
export function settingsLine(info) {
  return el("div", { class: "settings", "aria-label": "cache settings", dataset: { settings: info.settings_id || "" } },
    el("span", { class: "muted small", text: info.is_current === false ? "settings (not the current cache):" : "settings:" }),
    info.settings_text.map(([label, value]) => el("span", { class: "setting" },
      el("span", { class: "muted", text: `${label} ` }), el("strong", { text: value }))));
}

// Links to this prompt's caches made with other settings (view: the view to open them in).
export function otherSettings(info, view, extra) {
  if (!info.other_settings.length) return null;
  return el("p", { class: "muted small other-settings" }, "Also cached with other settings: ",
    info.other_settings.flatMap((other, i) => [i ? " · " : "",
      el("a", { href: hashFor(Object.assign({ view, model: info.model, prompt: info.prompt_hash }, extra,
                                            { settings: other.current ? "" : other.settings_id })),
                text: `${other.settings_text.map(([label, value]) => `${label} ${value}`).join(", ")}${other.current ? " (current)" : ""}` })]));
}
