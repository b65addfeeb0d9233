"use strict";
(() => {
  const tbody = document.querySelector("#jobs tbody");
  const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
  function row(j) {
    const ran = j.started ? sd.seconds(((j.finished ? new Date(j.finished) : new Date()) - new Date(j.started)) / 1000) : "";
    const p = j.progress ? `${esc(j.progress.phase)} ${j.progress.done}/${j.progress.total}` : "";
    const last = j.state === "queued" || j.state === "running" ? `<button class="cancel" data-id="${esc(j.id)}">Cancel</button>` : esc(j.error);
    return `<tr data-id="${esc(j.id)}"><td><a href="/jobs/${sd.enc(j.id)}">${esc(j.title)}</a></td><td>${esc(j.type)}</td><td><span class="state ${esc(j.state)}">${esc(j.state)}</span></td><td>${p}</td><td>${new Date(j.created).toLocaleString()}</td><td>${ran}</td><td>${last}</td></tr>`;
  }
  async function refresh() {
    const jobs = await sd.api("GET", "/api/jobs?limit=200");
    tbody.innerHTML = jobs.length ? jobs.map(row).join("") : `<tr><td colspan="7" class="muted">No jobs yet.</td></tr>`;
  }
  tbody.addEventListener("click", async ev => {
    const id = ev.target.dataset && ev.target.dataset.id;
    if (ev.target.classList.contains("cancel") && id) { await sd.api("POST", `/api/jobs/${sd.enc(id)}/cancel`).catch(e => alert(e.message)); refresh(); }
  });
  setInterval(() => refresh().catch(() => {}), 2000);
})();
