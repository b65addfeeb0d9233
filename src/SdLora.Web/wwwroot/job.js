"use strict";
(() => {
  const { job } = sd.pageData();
  const $ = id => document.getElementById(id);
  function result(j) {
    $("state").textContent = j.state; $("state").className = "state " + j.state;
    $("error").textContent = j.error ?? "";
    $("cancel").hidden = !(j.state === "queued" || j.state === "running");
    const r = j.result;
    if (!r) return;
    const box = $("result");
    box.replaceChildren();
    if (r.images) box.append(sd.el("div", { class: "gallery" }, ...r.images.map(i => sd.el("figure", {},
      sd.el("img", { src: `/files/outputs/${sd.enc(i.file)}`, alt: i.file }), sd.el("figcaption", { text: `seed ${i.seed}` })))));
    else box.append(sd.el("pre", { class: "log", text: JSON.stringify(r, null, 2) }));
  }
  $("cancel").onclick = () => sd.api("POST", `/api/jobs/${sd.enc(job.id)}/cancel`).catch(e => alert(e.message));
  sd.watchJob(job.id, {
    log: e => { $("log").textContent += new Date(e.time).toLocaleTimeString() + "  " + e.message + "\n"; },
    progress: e => sd.showProgress($("progress"), e.progress),
    state: e => { $("state").textContent = e.message; $("state").className = "state " + e.message; },
    end: j => { $("progress").hidden = true; result(j); },
  });
  result(job);
})();
