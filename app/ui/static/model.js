// Model page: one model's versions (job, metrics, serving state), its labels, and the
// tutorial's decision-line plot of a chosen version over a chosen dataset.
"use strict";

(() => {
  const { el, api, apiLink, time, metrics, pathId, markNav, showError } = KJ;
  const main = document.getElementById("main");
  const name = pathId();
  markNav("models");

  function versionsTable(model) {
    const state = Object.fromEntries(model.model_version_status.map((s) => [s.version, s]));
    const labelsOf = (v) => Object.entries(model.labels).filter(([, n]) => n === v).map(([l]) => l);
    return el("table", { id: "versions" },
      el("thead", {}, el("tr", {}, el("th", { class: "num" }, "Version"),
        ["Labels", "Metrics", "Job", "Serving", "Created", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, [...model.versions].sort((a, b) => b.version - a.version).map((v) => {
        const s = state[String(v.version)];
        return el("tr", { "data-version": v.version },
          el("td", { class: "num" }, v.version),
          el("td", {}, labelsOf(v.version).map((l) => el("span", { class: "badge label" }, l))),
          el("td", { class: "mono" }, metrics(v.metrics) || "—"),
          el("td", {}, v.job_id ? el("a", { class: "mono", href: `/ui/jobs/${v.job_id}` }, v.job_id) : "uploaded"),
          el("td", { title: s && s.status.error_message }, s ? s.state : ""),
          el("td", {}, time(v.created_at)),
          el("td", {}, apiLink(`/v1/models/${encodeURIComponent(name)}/versions/${v.version}/download`,
            ".keras", `${name}-${v.version}.keras`)));
      })));
  }

  // Draws GET /v1/models/{name}/versions/{n}/boundary.png; a refusal (a model without 2
  // inputs, an unknown array) shows its problem detail.
  function boundaryForm(model, datasets) {
    // Newest first, the latest chosen: whatever order the API lists the versions in.
    const version = el("select", { name: "version" }, [...model.versions]
      .sort((a, b) => b.version - a.version)
      .map((v) => el("option", { value: v.version, selected: v.version === model.latest_version },
        `version ${v.version}`)));
    const dataset = el("select", { name: "dataset_id" }, datasets.map(
      (d) => el("option", { value: d.id }, `${d.name} (${d.id})`)));
    const x = el("input", { name: "x", value: "x", size: 8 });
    const y = el("input", { name: "y", value: "y", size: 8 });
    const out = el("div", { id: "boundary" });
    const form = el("form", { class: "inline", onsubmit: async (event) => {
      event.preventDefault();
      const query = new URLSearchParams({ dataset_id: dataset.value, x: x.value, y: y.value });
      const url = `/v1/models/${encodeURIComponent(name)}/versions/${version.value}/boundary.png?${query}`;
      out.replaceChildren(el("p", { class: "muted" }, "Drawing…"));
      try {
        const src = await KJ.image(url);
        out.replaceChildren(el("a", { href: src, target: "_blank" },
          el("img", { class: "plot", alt: "decision line", src })));
      } catch (error) {
        showError(out, error);
      }
    } },
    el("label", {}, "version", version), el("label", {}, "dataset", dataset),
    el("label", {}, "x (2 columns)", x), el("label", {}, "y (classes)", y),
    el("button", { type: "submit" }, "Draw"));
    return [el("h2", {}, "Decision line over a dataset"),
      el("p", { class: "muted" }, "For a model with one input of 2 features and one output: the points coloured by class (y > 0.5) and the line where the output is 0.5."),
      datasets.length ? form : el("p", { class: "muted" }, "Upload a dataset first."), out];
  }

  async function load() {
    main.replaceChildren(el("h1", {}, "Model ", el("span", { class: "mono" }, name)));
    try {
      const [model, datasets] = await Promise.all([
        api(`/v1/models/${encodeURIComponent(name)}`), api("/v1/datasets?limit=200")]);
      const labels = Object.entries(model.labels);
      main.append(
        el("p", {}, `Latest version ${model.latest_version}. `,
          labels.length ? ["Labels: ", labels.map(([l, v]) => [el("span", { class: "badge label" }, l), ` → ${v} `])] : "No labels."),
        versionsTable(model), ...boundaryForm(model, datasets.items));
    } catch (error) {
      const box = el("div");
      main.append(box);
      showError(box, error);
    }
  }

  load();
})();
