// Datasets page: every dataset with its arrays (name, shape, dtype).
"use strict";

(() => {
  const { el, api, time, bytes, markNav, showError } = KJ;
  const main = document.getElementById("main");
  markNav("datasets");

  function arrays(meta) {
    return el("div", { class: "arrays mono" }, Object.entries(meta).map(([n, a]) =>
      el("span", { "data-array": n }, `${n} [${a.shape.join(", ")}] ${a.dtype}`)));
  }

  async function load() {
    const body = el("div");
    main.replaceChildren(el("h1", {}, "Datasets"), body);
    try {
      const page = await api("/v1/datasets?limit=200");
      if (!page.items.length) {
        body.replaceChildren(el("p", { class: "muted" },
          "No datasets yet: POST /v1/datasets with an .npz, .npy or CSV file."));
        return;
      }
      body.replaceChildren(el("p", { class: "muted" }, `${page.items.length} of ${page.total}`),
        el("table", { id: "datasets" },
          el("thead", {}, el("tr", {}, ["Name", "Id", "Format", "Rows", "Size", "Arrays", "Created"]
            .map((h) => el("th", {}, h)))),
          el("tbody", {}, page.items.map((d) => el("tr", { "data-dataset": d.id },
            el("td", {}, d.name),
            el("td", { class: "mono" }, d.id),
            el("td", {}, d.format),
            el("td", { class: "num" }, d.num_rows),
            el("td", { class: "num" }, bytes(d.size_bytes)),
            el("td", {}, arrays(d.arrays)),
            el("td", {}, time(d.created_at)))))));
    } catch (error) {
      showError(body, error);
    }
  }

  load();
})();
