"use strict";
(() => {
  const { run } = sd.pageData();
  const base = `/api/runs/${sd.enc(run)}`;
  const $ = id => document.getElementById(id);
  let job = null, source = null, lastStep = 0, plot = null, lossBusy = false;
  const data = [[], [], []];  // step, loss, smoothed

  function makePlot() {
    const el = $("chart");
    plot = new uPlot({
      width: Math.max(300, el.clientWidth), height: 280,
      scales: { x: { time: false } },
      axes: [{ label: "step", stroke: "#9aa4b2", grid: { stroke: "#2a3140" }, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000] }, { label: "loss", stroke: "#9aa4b2", grid: { stroke: "#2a3140" }, size: 60 }],
      series: [{ label: "step" }, { label: "loss", stroke: "rgba(110,168,254,0.55)", width: 1 }, { label: "smoothed", stroke: "#f59e0b", width: 2 }],
    }, data, el);
    window.addEventListener("resize", () => plot.setSize({ width: Math.max(300, el.clientWidth), height: 280 }));
  }

  async function loadLoss() {
    if (lossBusy) return;
    lossBusy = true;
    try {
      const rows = await sd.api("GET", `${base}/loss?after=${lastStep}`);
      if (rows.length) {
        for (const r of rows) { data[0].push(r.step); data[1].push(r.loss); data[2].push(r.smoothed_loss); lastStep = r.step; }
        plot.setData(data);
      }
    } finally { lossBusy = false; }
  }

  async function loadRun() {
    const d = await sd.api("GET", base);
    $("samples").replaceChildren(...d.samples.map(s => sd.el("figure", {},
      sd.el("img", { src: `/files/runs/${sd.enc(run)}/${s}`, alt: s, loading: "lazy" }), sd.el("figcaption", { text: s.replace("samples/", "") }))));
    $("loras").replaceChildren(...d.loras.map(f => sd.el("li", {}, sd.el("a", { href: `/files/runs/${sd.enc(run)}/${sd.enc(f)}?download=true`, text: f }))));
    if (!d.loras.length) $("loras").replaceChildren(sd.el("li", { class: "muted", text: "none yet" }));
    job = d.jobs[0] || null;
    const state = job ? job.state : "no job";
    $("state").textContent = state; $("state").className = "state " + state;
    const active = job && (job.state === "queued" || job.state === "running");
    $("cancel").hidden = !active;
    $("resume").hidden = active || !d.has_state || (job && job.state === "succeeded" && job.result && !job.result.cancelled);
    $("use").textContent = job && job.result && job.result.library_lora ? `In the LoRA folder: use <lora:${job.result.library_lora}:0.8> on the Generate page.` : "";
    if (job && job.progress) showProgress(job.progress);
    return d;
  }

  function showProgress(p) {
    if (p.phase === "training") {
      $("step").textContent = `${p.done} / ${p.total}`;
      $("epoch").textContent = p.epochs ? `${p.epoch} / ${p.epochs}` : "–";
      $("rate").textContent = p.rate ? (p.rate >= 1 ? `${p.rate.toFixed(2)} it/s` : `${(1 / p.rate).toFixed(2)} s/it`) : "–";
      $("eta").textContent = sd.seconds(p.eta_seconds);
      if (p.smoothed_loss != null) $("loss").textContent = `${p.loss.toFixed(4)} (${p.smoothed_loss.toFixed(4)})`;
      $("phase").hidden = true;
    } else sd.showProgress($("phase"), p);
  }

  async function follow() {
    if (source) source.close();
    source = null;
    if (!job || !(job.state === "queued" || job.state === "running")) return;
    $("log").textContent = "";
    source = sd.watchJob(job.id, {
      log: e => { $("log").textContent += e.message + "\n"; $("log").scrollTop = $("log").scrollHeight; },
      progress: e => {
        showProgress(e.progress);
        if (e.progress.phase === "training") loadLoss();
        if (e.progress.phase === "sampling" || e.progress.phase === "saving") loadRun();
      },
      state: e => { $("state").textContent = e.message; $("state").className = "state " + e.message; },
      end: async () => { await loadLoss(); await loadRun(); $("phase").hidden = true; },
    });
  }

  async function showLog() {
    if (!job) return;
    const res = await fetch(`/api/jobs/${sd.enc(job.id)}/log`);
    $("log").textContent = (await res.text()).split("\n").map(l => l.slice(20)).join("\n");
  }

  $("cancel").onclick = async () => { if (job) await sd.api("POST", `/api/jobs/${sd.enc(job.id)}/cancel`).catch(e => alert(e.message)); };
  $("resume").onclick = async () => {
    try { await sd.api("POST", `${base}/resume`); await loadRun(); await follow(); } catch (e) { alert(e.message); }
  };

  // For people and browser tests alike: how many loss points the chart holds.
  window.sdloraRun = { lossPoints: () => data[0].length };
  makePlot();
  loadRun().then(async () => { await loadLoss(); if (job && !(job.state === "queued" || job.state === "running")) await showLog(); await follow(); });
})();
