// Job page: the job's facts, and its loss and metric curves (training and validation, one
// uPlot chart per metric) growing live from the job's Server-Sent Events
// (GET /v1/jobs/{id}/events: `epoch` events carry each epoch's logs, `status` events the
// status). KJ.events reads them with the API key, reconnects by itself and sends
// Last-Event-ID, so a dropped stream resumes with no gap. Each chart's `data-points`
// attribute says how many epochs it shows.
"use strict";

(() => {
  const { el, api, apiLink, badge, progress, time, duration, num, metrics, pathId, markNav,
    showError } = KJ;
  const TRAIN = "#1f77b4", VAL = "#ff7f0e", HEIGHT = 260;
  const id = pathId();
  const main = document.getElementById("main");
  const epochs = []; // epoch index → its logs (sparse until every event has arrived)
  const charts = new Map(); // metric → { box, plot }
  let job = null, stop = null, batchNote = "";

  markNav("jobs");
  const statusSlot = el("span", { id: "status" });
  const live = el("span", { class: "live", id: "live" });
  const progressSlot = el("div", { id: "progress", class: "toolbar" });
  const facts = el("dl", { class: "facts" });
  const actions = el("div", { class: "toolbar" });
  const chartsBox = el("div", { class: "charts", id: "charts", "data-epochs": "0" });
  const resultBox = el("div", { id: "result" });
  const boundaryBox = el("div", { id: "boundary" });
  main.replaceChildren(
    el("h1", {}, "Job ", el("span", { class: "mono" }, id), statusSlot, live),
    progressSlot, el("div", { class: "card" }, facts), actions,
    el("h2", {}, "Loss and metrics per epoch"), chartsBox, resultBox, boundaryBox);

  // --- curves ------------------------------------------------------------------------------

  const finite = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

  function metricNames() {
    const names = [];
    for (const logs of epochs) {
      if (!logs) continue;
      for (const key of Object.keys(logs)) {
        const base = key.startsWith("val_") ? key.slice(4) : key;
        if (!names.includes(base)) names.push(base);
      }
    }
    return names.sort((a, b) => (a !== "loss") - (b !== "loss"));
  }

  function series(name) {
    const xs = [], train = [], val = [];
    epochs.forEach((logs, i) => { // forEach skips epochs not seen yet
      xs.push(i + 1); // epochs counted from 1, as Keras's progress bar does
      train.push(finite(logs[name]));
      val.push(finite(logs[`val_${name}`]));
    });
    return [xs, train, val];
  }

  function makeChart(name, data) {
    const box = el("div", { class: "chart", "data-metric": name, "data-points": "0" });
    chartsBox.append(box);
    const width = Math.max(320, box.clientWidth - 16);
    const value = (u, v) => (v === null || v === undefined ? "—" : num(v));
    const plot = new uPlot({
      title: name, width, height: HEIGHT,
      legend: { live: false }, // a static legend: the series names, no hover values
      scales: { x: { time: false } },
      series: [
        { label: "epoch" },
        { label: "training", stroke: TRAIN, width: 2, value,
          points: { show: true, size: 7, fill: TRAIN } },
        { label: "validation", stroke: VAL, width: 2, dash: [6, 4], spanGaps: true, value,
          points: { show: true, size: 7, fill: VAL } },
      ],
      axes: [
        { label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
          values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) ? t : "")) },
        { label: name, size: 64, values: (u, ticks) => ticks.map(num) },
      ],
    }, data, box);
    const chart = { box, plot };
    charts.set(name, chart);
    return chart;
  }

  function draw() {
    for (const name of metricNames()) {
      const data = series(name);
      const chart = charts.get(name) || makeChart(name, data);
      chart.plot.setData(data);
      chart.box.dataset.points = String(data[1].filter((v) => v !== null).length);
      chart.box.dataset.valPoints = String(data[2].filter((v) => v !== null).length);
    }
    chartsBox.dataset.epochs = String(epochs.filter(Boolean).length);
  }

  window.addEventListener("resize", () => {
    for (const { box, plot } of charts.values()) {
      plot.setSize({ width: Math.max(320, box.clientWidth - 16), height: HEIGHT });
    }
  });

  // --- facts -------------------------------------------------------------------------------

  function setLive(on, text) {
    live.className = on ? "live on" : "live";
    live.textContent = text || "";
  }

  function renderStatus() {
    statusSlot.replaceChildren(badge(job.status));
    const done = epochs.filter(Boolean).length;
    progressSlot.replaceChildren(
      job.type === "fit" ? progress(Math.max(job.epoch, done), job.epochs, job.status) : "",
      el("span", { class: "muted", id: "batch" },
        KJ.TERMINAL.includes(job.status) ? "" : batchNote));
  }

  function fact(label, value) {
    return value === "" || value === null || value === undefined
      ? [] : [el("dt", {}, label), el("dd", {}, value)];
  }

  function renderFacts() {
    const p = job.params || {};
    const model = job.model_name
      ? el("a", { href: `/ui/models/${encodeURIComponent(job.model_name)}` },
        job.model_version ? `${job.model_name}/${job.model_version}` : job.model_name)
      : "";
    const settings = ["epochs", "batch_size", "validation_split", "validation_dataset_id",
      "seed", "input", "x", "y"].filter((k) => p[k] !== undefined && p[k] !== null && p[k] !== 0)
      .map((k) => `${k}=${JSON.stringify(p[k])}`).join("  ");
    facts.replaceChildren(
      ...fact("type", job.type), ...fact("model", model),
      ...fact("dataset", job.dataset_id ? el("a", { class: "mono", href: "/ui/datasets" }, job.dataset_id) : ""),
      ...fact("spec", job.spec_id ? el("span", { class: "mono" }, job.spec_id) : ""),
      ...fact("parameters", settings ? el("span", { class: "mono" }, settings) : ""),
      ...fact("created", time(job.created_at)),
      ...fact("ran", job.started_at ? `${duration(job.started_at, job.finished_at)}` : ""),
      ...fact("attempts", job.attempts && job.attempts.length > 1 ? String(job.attempts.length) : ""));
    const base = `/v1/jobs/${encodeURIComponent(job.id)}`;
    const links = [apiLink(base, "JSON"), apiLink(`${base}/logs`, "logs")];
    if (job.type === "fit") {
      links.push(apiLink(`${base}/history.png`, "history.png"),
        apiLink(`${base}/history.svg`, "history.svg"));
    }
    if (!KJ.TERMINAL.includes(job.status)) {
      links.push(el("button", { type: "button", onclick: cancel }, "Cancel job"));
    }
    actions.replaceChildren(...links);
    resultBox.replaceChildren(
      job.error ? el("div", { class: "error" }, job.error) : "",
      job.result && job.result.metrics
        ? el("p", {}, el("strong", {}, "Result: "), metrics(job.result.metrics)) : "");
  }

  async function cancel() {
    try {
      job = await api(`/v1/jobs/${encodeURIComponent(id)}:cancel`, { method: "POST" });
      renderStatus();
      renderFacts();
    } catch (error) {
      showError(resultBox, error);
    }
  }

  // The tutorial's picture for a finished job whose model has 2 inputs and 1 output.
  async function drawBoundary() {
    const p = job.params || {};
    if (job.status !== "succeeded" || !job.model_version || !job.dataset_id
        || typeof p.x !== "string" || typeof p.y !== "string") return;
    const query = new URLSearchParams({ dataset_id: job.dataset_id, x: p.x, y: p.y });
    const url = `/v1/models/${encodeURIComponent(job.model_name)}/versions/${job.model_version}/boundary.png?${query}`;
    let src;
    try {
      src = await KJ.image(url);
    } catch (error) { // e.g. a model that does not take 2 features: say so, quietly
      boundaryBox.replaceChildren(el("p", { class: "muted" }, `No decision line: ${error.message}`));
      return;
    }
    boundaryBox.replaceChildren(el("h2", {}, "Decision line (model output = 0.5)"),
      el("a", { href: src, target: "_blank" }, el("img", { class: "plot", alt: "decision line", src })));
  }

  // --- live --------------------------------------------------------------------------------

  const STATES = { open: "live", reconnecting: "reconnecting…", closed: "stream closed" };

  function follow() {
    stop = KJ.events(`/v1/jobs/${encodeURIComponent(id)}/events`, {
      epoch(data) {
        epochs[data.epoch] = data.logs || {};
        job.epoch = Math.max(job.epoch, data.epoch + 1);
        draw();
        renderStatus();
      },
      progress(data) {
        batchNote = `epoch ${data.epoch + 1}, batch ${data.batch}${data.steps ? `/${data.steps}` : ""}: ${metrics(data.logs)}`;
        renderStatus();
      },
      async status(data) {
        job.status = data.status;
        renderStatus();
        if (KJ.TERMINAL.includes(job.status)) {
          stop(); // the server ends the stream too; do not reconnect
          setLive(false, "");
          await load(false);
        }
      },
    }, (state) => setLive(state === "open", STATES[state]));
  }

  async function load(first) {
    try {
      job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
    } catch (error) {
      showError(main, error);
      return;
    }
    document.title = `${job.id} · keras-jobs`;
    // What has been recorded so far; the stream then replays from the start and goes on.
    const history = job.history || {};
    const keys = Object.keys(history);
    const count = Math.max(0, ...keys.map((k) => history[k].length));
    for (let i = 0; i < count; i += 1) {
      if (!epochs[i]) epochs[i] = Object.fromEntries(keys.map((k) => [k, history[k][i]]));
    }
    draw();
    if (!count && job.type !== "fit") {
      chartsBox.replaceChildren(el("p", { class: "muted" }, `A ${job.type} job has no per-epoch curves.`));
    }
    renderStatus();
    renderFacts();
    if (first && !KJ.TERMINAL.includes(job.status)) follow();
    if (KJ.TERMINAL.includes(job.status)) await drawBoundary();
  }

  load(true);
})();
