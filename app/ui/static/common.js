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

  // --- the API key ----------------------------------------------------------------------------
  // Kept in sessionStorage: it lives as long as this tab, and other tabs, later visits and
  // scripts that outlive the tab never see it (localStorage would keep it on disk for every
  // page of this origin, indefinitely). Without a stored key requests go out as before, so a
  // server that needs no key (KJ_AUTH=auto on loopback, off) looks as it always did.
  const KEY_ITEM = "kj-api-key";

  function apiKey() {
    try {
      return sessionStorage.getItem(KEY_ITEM) || "";
    } catch (error) {
      return ""; // storage disabled: no key
    }
  }

  // A small form in the header, shown when the server answered 401: saving reloads the page,
  // which then asks again with the key.
  function askKey() {
    const stored = apiKey() !== "";
    let form = document.getElementById("api-key");
    if (!form) {
      const input = el("input", { type: "password", name: "key", placeholder: "kj_…",
        autocomplete: "off", spellcheck: "false", "aria-label": "API key", required: true });
      form = el("form", { id: "api-key", class: "key", onsubmit: (event) => {
        event.preventDefault();
        sessionStorage.setItem(KEY_ITEM, input.value.trim());
        location.reload();
      } }, el("span", { class: "why" }), input, el("button", { type: "submit" }, "Save"));
      document.querySelector("header.top").append(form);
    }
    form.querySelector(".why").textContent = stored ? "The API key was refused:" : "API key:";
  }

  // fetch with the key, if there is one; a 401 shows the key form.
  async function request(path, options) {
    const key = apiKey();
    const headers = new Headers((options && options.headers) || {});
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401) askKey();
    return response;
  }

  // A failed call throws an Error carrying the problem+json body's detail and field errors.
  async function api(path, options) {
    const response = await request(path, options);
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

  // An API image (a plot) as a blob: URL: an <img src> could not send the key. A refusal
  // throws like `api` does.
  async function image(path) {
    const response = await request(path);
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      const fields = (body.errors || []).map((f) => `${f.pointer}: ${f.detail}`);
      const error = new Error([body.detail || `${response.status} ${response.statusText}`, ...fields].join("\n"));
      error.status = response.status;
      throw error;
    }
    return URL.createObjectURL(await response.blob());
  }

  // A link to an API resource (JSON, logs, a plot, a model file). With a key, a click fetches
  // it with the key and opens (or, given `download`, saves) what came back.
  function apiLink(href, text, download) {
    return el("a", { href, download, onclick: async (event) => {
      if (!apiKey()) return; // no key: an ordinary link
      event.preventDefault();
      const tab = download ? null : window.open("", "_blank"); // now, while the click counts
      const response = await request(href);
      if (!response.ok) {
        if (tab) tab.close();
        return; // a 401 shows the key form
      }
      const url = URL.createObjectURL(await response.blob());
      if (download) el("a", { href: url, download }).click();
      else if (tab) tab.location.href = url;
      else location.assign(url); // pop-ups blocked: open it here
    } }, text);
  }

  // Server-Sent Events read with fetch, since EventSource cannot send the key. Like
  // EventSource it reconnects after a dropped stream and sends Last-Event-ID, so nothing is
  // missed or repeated. `on[type](data)` gets each event's parsed JSON data; `state` hears
  // "open", "reconnecting" and "closed". Returns a function that stops it.
  function events(path, on, state) {
    const abort = new AbortController();
    let last = null;

    function dispatch(block) {
      let type = "message", data = "";
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue; // a keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "id") last = value;
        else if (field === "event") type = value;
        else if (field === "data") data += (data ? "\n" : "") + value;
      }
      if (data && on[type]) on[type](JSON.parse(data));
    }

    async function run() {
      while (!abort.signal.aborted) {
        try {
          const headers = last === null ? {} : { "Last-Event-ID": last };
          const response = await request(path, { headers, cache: "no-store", signal: abort.signal });
          if (!response.ok) { // 401 (the key form is up), 404: retrying would not help
            state("closed");
            return;
          }
          state("open");
          const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += value; // the server ends lines with \n
            let end;
            while ((end = buffer.indexOf("\n\n")) >= 0) {
              const block = buffer.slice(0, end);
              buffer = buffer.slice(end + 2);
              dispatch(block);
            }
          }
        } catch (error) {
          if (abort.signal.aborted) return;
        }
        if (abort.signal.aborted) return;
        state("reconnecting");
        await new Promise((resolve) => setTimeout(resolve, 3000));
      }
    }

    run();
    return () => abort.abort();
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

  return { TERMINAL, el, api, request, image, apiLink, events, showError, badge, progress, time,
           duration, num, bytes, metrics, pathId, markNav };
})();
