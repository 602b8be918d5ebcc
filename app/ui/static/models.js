// Models page: the model registry (GET /v1/models), newest first.
"use strict";

(() => {
  const { el, api, time, markNav, showError } = KJ;
  const main = document.getElementById("main");
  markNav("models");

  async function load() {
    const body = el("div");
    main.replaceChildren(el("h1", {}, "Models"), body);
    try {
      const page = await api("/v1/models?limit=200");
      if (!page.items.length) {
        body.replaceChildren(el("p", { class: "muted" },
          "No models yet: a succeeded fit job saves one, or upload a .keras file."));
        return;
      }
      body.replaceChildren(el("p", { class: "muted" }, `${page.items.length} of ${page.total}`),
        el("table", { id: "models" },
          // Number columns are right-aligned, their headers too (td.num under a left th
          // read as a misaligned column).
          el("thead", {}, el("tr", {}, el("th", {}, "Model"),
            el("th", { class: "num" }, "Latest version"), el("th", { class: "num" }, "Versions"),
            el("th", {}, "Updated"))),
          el("tbody", {}, page.items.map((m) => el("tr", { "data-model": m.name },
            el("td", {}, el("a", { href: `/ui/models/${encodeURIComponent(m.name)}` }, m.name)),
            el("td", { class: "num" }, m.latest_version),
            el("td", { class: "num" }, m.versions),
            el("td", {}, time(m.updated_at)))))));
    } catch (error) {
      showError(body, error);
    }
  }

  load();
})();
