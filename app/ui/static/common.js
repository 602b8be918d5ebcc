// Helpers every dashboard page shares. Pages build their DOM with `el` (text nodes, never
// innerHTML): job errors, names and metrics come from users.
"use strict";

const KJ = (() => {
  const TERMINAL = ["succeeded", "failed", "cancelled"];

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // A failed call throws an Error carrying the problem+json body's detail and field errors.
  async function api(path, options) {
    const response = await fetch(path, options);
    const type = response.headers.get("content-type") || "";
    const body = type.includes("json") ? await response.json() : await response.text();
    if (!response.ok) {
      const detail = body && body.detail ? body.detail : `${response.status} ${response.statusText}`;
      const fields = (body && body.errors) || [];
      const error = new Error([detail, ...fields.map((f) => `${f.pointer}: ${f.detail}`)].join("\n"));
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function showError(container, error) {
    container.replaceChildren(el("div", { class: "error" }, error.message || String(error)));
  }

  function badge(status) {
    return el("span", { class: `badge ${status}`, "data-status": status }, status);
  }

  function progress(done, total, status) {
    const share = total ? Math.min(100, (100 * done) / total) : 0;
    return el("span", { class: `progress ${status || ""}` },
      el("span", { class: "bar" }, el("div", { style: `width: ${share}%` })),
      el("span", { class: "mono" }, `${done}/${total}`));
  }

  function time(iso) {
    return iso ? new Date(iso).toLocaleString() : "";
  }

  function duration(start, end) {
    if (!start) return "";
    const seconds = ((end ? new Date(end) : new Date()) - new Date(start)) / 1000;
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function num(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value !== "number") return String(value);
    if (value !== 0 && (Math.abs(value) >= 1e5 || Math.abs(value) < 1e-3)) return value.toExponential(3);
    return Number(value.toPrecision(4)).toString();
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }

  function metrics(obj) {
    return Object.entries(obj || {}).map(([k, v]) => `${k} ${num(v)}`).join(" · ");
  }

  // The last path segment (a job id, a model name), as the page's own URL names it.
  function pathId() {
    return decodeURIComponent(location.pathname.replace(/\/+$/, "").split("/").pop());
  }

  function markNav(name) {
    const link = document.querySelector(`nav a[data-nav="${name}"]`);
    if (link) link.classList.add("current");
  }

  return { TERMINAL, el, api, showError, badge, progress, time, duration, num, bytes, metrics,
           pathId, markNav };
})();
