// Draws the interactive figures of a page or notebook output that lens_pipeline.draw.interactive
// wrote: each .lens-figure box has its figure, Plotly options and links as JSON in a data block
// beside it. A click on a linked point asks the viewer around the page to open that view (a
// message; the viewer decides), and names the point under the figure (all a file:// page or a
// notebook can do). Nothing here is fetched: Plotly is loaded before this script, from the save
// path or inlined.
(function () {
  "use strict";

  function linkOf(point, links) {
    const data = Array.isArray(point.customdata) ? point.customdata[0] : point.customdata;
    return Number.isInteger(data) && data >= 0 && data < links.length ? links[data] : null;
  }

  function draw(box) {
    if (box.dataset.drawn) return;
    box.dataset.drawn = "1";
    const holder = box.parentNode;
    const picked = holder.querySelector(".lens-picked");
    if (typeof window.Plotly === "undefined") {
      picked.textContent = "Plotly's script did not load (in a notebook: display the figure again after a restart).";
      return;
    }
    const spec = JSON.parse(holder.querySelector("script.lens-figure-data").textContent);
    const figure = spec.figure;
    window.Plotly.newPlot(box, figure.data, figure.layout || {}, spec.config || {}).then(() => {
      box.dataset.ready = "1";
    });
    if (!spec.links || !spec.links.length) return;
    box.on("plotly_click", (event) => {
      const link = event && event.points && event.points.length ? linkOf(event.points[0], spec.links) : null;
      if (!link) return;
      const framed = window.parent !== window;
      picked.textContent = framed ? `Opening ${link.label}…` : `${link.label} (open the viewer to see it: python -m lens_pipeline.server)`;
      picked.dataset.params = JSON.stringify(link.params);
      if (framed) window.parent.postMessage({ lens: "open", params: link.params }, "*");
    });
  }

  function drawAll() {
    document.querySelectorAll(".lens-figure").forEach(draw);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", drawAll);
  else drawAll();
})();
