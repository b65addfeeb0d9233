// Shared helpers for sdlora's pages: JSON calls, job event streams, progress bars. Plain JS, no build step.
"use strict";
const sd = {
  async api(method, url, body) {
    const init = { method, headers: {} };
    if (body instanceof FormData) init.body = body;
    else if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
    const res = await fetch(url, init);
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = text; }
    if (!res.ok) throw new Error((data && data.error) || `${res.status} ${res.statusText}`);
    return data;
  },
  pageData() {
    const el = document.getElementById("page-data");
    return el ? JSON.parse(el.textContent) : {};
  },
  // Calls handlers.progress/log/state(event) as the job reports, handlers.end(job) once when it has ended.
  watchJob(id, handlers) {
    const source = new EventSource(`/api/jobs/${encodeURIComponent(id)}/events`);
    for (const kind of ["progress", "log", "state"])
      source.addEventListener(kind, e => handlers[kind] && handlers[kind](JSON.parse(e.data)));
    source.addEventListener("end", e => { source.close(); handlers.end && handlers.end(JSON.parse(e.data)); });
    return source;
  },
  showProgress(el, p, text) {
    if (!el) return;
    el.hidden = false;
    const frac = p && p.total > 0 ? Math.min(1, p.done / p.total) : 0;
    el.querySelector(".bar").style.width = (frac * 100).toFixed(1) + "%";
    el.querySelector(".label").textContent = text ?? (p ? `${p.phase} ${p.done}/${p.total}${p.label ? " · " + p.label : ""}` : "");
  },
  seconds(s) {
    if (s == null || !isFinite(s)) return "–";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), sec = s % 60;
    return (h ? h + ":" + String(m).padStart(2, "0") : m) + ":" + String(sec).padStart(2, "0");
  },
  formObject(form) {
    const o = {};
    for (const el of form.elements) {
      if (!el.name) continue;
      if (el.type === "checkbox") o[el.name] = el.checked;
      else if (el.type === "number") o[el.name] = el.value === "" ? null : Number(el.value);
      else o[el.name] = el.value;
    }
    return o;
  },
  el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "text") e.textContent = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  },
  enc: encodeURIComponent,
};
