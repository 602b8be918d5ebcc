// Jobs page: the newest jobs with their status and epoch progress. While any job is queued or
// running the list is fetched again every 2 s (one request, however many jobs are live;
// an event stream per job would hold one of the browser's few connections each).
"use strict";

(() => {
  const { el, api, badge, progress, time, duration, markNav, showError } = KJ;
  const main = document.getElementById("main");
  const FAST_MS = 2000, SLOW_MS = 10000;
  let statusFilter = new URLSearchParams(location.search).get("status") || "";
  let timer = null;

  markNav("jobs");
  const select = el("select", { id: "status-filter", onchange: () => {
    statusFilter = select.value;
    history.replaceState(null, "", statusFilter ? `?status=${statusFilter}` : location.pathname);
    refresh();
  } }, ["", "queued", "running", "succeeded", "failed", "cancelled"].map(
    (s) => el("option", { value: s, selected: s === statusFilter }, s || "all statuses")));
  const summary = el("span", { class: "muted" });
  const live = el("span", { class: "live" });
  const table = el("div");
  main.replaceChildren(el("h1", {}, "Jobs"), el("div", { class: "toolbar" }, select, summary, live),
    table);

  function row(job) {
    const model = job.model_name
      ? el("a", { href: `/ui/models/${encodeURIComponent(job.model_name)}` },
        job.model_version ? `${job.model_name}/${job.model_version}` : job.model_name)
      : "";
    const fit = job.type === "fit";
    return el("tr", { "data-job-id": job.id, "data-status": job.status },
      el("td", {}, el("a", { class: "mono", href: `/ui/jobs/${job.id}` }, job.id)),
      el("td", {}, job.type),
      el("td", {}, badge(job.status), job.cancel_requested && !KJ.TERMINAL.includes(job.status)
        ? el("span", { class: "muted" }, " cancelling") : ""),
      el("td", {}, fit ? progress(job.epoch, job.epochs, job.status) : ""),
      el("td", {}, model),
      el("td", { class: "mono" }, job.dataset_id || ""),
      el("td", {}, time(job.created_at)),
      el("td", { class: "num" }, duration(job.started_at, job.finished_at)));
  }

  async function refresh() {
    clearTimeout(timer);
    let delay = SLOW_MS;
    try {
      const query = new URLSearchParams({ limit: "50" });
      if (statusFilter) query.set("status", statusFilter);
      const page = await api(`/v1/jobs?${query}`);
      summary.textContent = `${page.items.length} of ${page.total}`;
      table.replaceChildren(page.items.length
        ? el("table", { id: "jobs" },
          el("thead", {}, el("tr", {}, ["Job", "Type", "Status", "Epochs", "Model", "Dataset",
            "Created", "Ran"].map((h) => el("th", {}, h)))),
          el("tbody", {}, page.items.map(row)))
        : el("p", { class: "muted" }, "No jobs yet. Submit one with POST /v1/jobs (see API docs)."));
      const active = page.items.some((j) => !KJ.TERMINAL.includes(j.status));
      live.className = active ? "live on" : "live";
      live.textContent = active ? "live" : "";
      if (active) delay = FAST_MS;
    } catch (error) {
      showError(table, error);
    }
    timer = setTimeout(refresh, document.hidden ? SLOW_MS : delay);
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  refresh();
})();
