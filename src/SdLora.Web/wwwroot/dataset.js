"use strict";
(() => {
  const { dataset } = sd.pageData();
  const name = dataset.name, base = `/api/datasets/${sd.enc(name)}`;
  const images = document.getElementById("images"), error = document.getElementById("error"), status = document.getElementById("upload-status");
  const path = f => f.split("/").map(sd.enc).join("/");

  function render(d) {
    document.getElementById("layout").textContent = d.layout;
    if (!d.images.length) { images.replaceChildren(sd.el("p", { class: "muted", text: "No images yet: upload 3-20 photos of the subject (or a .zip)." })); return; }
    images.replaceChildren(...d.images.map(img => {
      const caption = sd.el("textarea", { rows: 3, placeholder: "caption (empty = the instance prompt)", "aria-label": `caption of ${img.file}` });
      caption.value = img.caption ?? "";
      const saved = sd.el("span", { class: "saved muted" });
      caption.addEventListener("change", async () => {
        try { await sd.api("PUT", `${base}/captions/${path(img.file)}`, { caption: caption.value }); saved.textContent = "saved"; }
        catch (e) { saved.textContent = e.message; }
      });
      const del = sd.el("button", { class: "small", title: "remove this image", text: "✕", onclick: async () => {
        if (!confirm(`Remove ${img.file}?`)) return;
        await sd.api("DELETE", `${base}/images/${path(img.file)}`); await reload();
      } });
      return sd.el("div", { class: "card", "data-file": img.file },
        sd.el("img", { src: `${base}/thumbs/${path(img.file)}`, alt: img.file, loading: "lazy" }),
        sd.el("div", { class: "card-head" }, sd.el("span", { class: "file", text: img.file }), del), caption, saved);
    }));
  }
  async function reload() { render(await sd.api("GET", base)); }

  document.getElementById("upload").addEventListener("change", async ev => {
    const files = ev.target.files;
    if (!files.length) return;
    const fd = new FormData();
    for (const f of files) fd.append("files", f, f.name);
    status.textContent = `uploading ${files.length} file(s)...`;
    try {
      const r = await sd.api("POST", `${base}/images`, fd);
      status.textContent = `added ${r.added.length}` + (r.skipped.length ? `, skipped ${r.skipped.length}: ${r.skipped.join("; ")}` : "");
      await reload();
    } catch (e) { status.textContent = e.message; }
    ev.target.value = "";
  });

  const settings = document.getElementById("settings");
  settings.addEventListener("submit", async ev => {
    ev.preventDefault();
    const o = sd.formObject(settings);
    try { render(await sd.api("PUT", `${base}/settings`, { instance_prompt: o.instance_prompt || null, class_prompt: o.class_prompt || null, repeats: o.repeats || 10 })); }
    catch (e) { error.textContent = e.message; }
  });

  const captionForm = document.getElementById("caption"), captionProgress = document.getElementById("caption-progress");
  captionForm.addEventListener("submit", async ev => {
    ev.preventDefault();
    error.textContent = "";
    const o = sd.formObject(captionForm);
    try {
      const job = await sd.api("POST", `${base}/caption`, { dataset: name, prefix: o.prefix, overwrite: o.overwrite });
      sd.showProgress(captionProgress, null, "queued");
      sd.watchJob(job.id, {
        progress: e => sd.showProgress(captionProgress, e.progress),
        end: async j => {
          sd.showProgress(captionProgress, { done: 1, total: 1 }, j.state === "succeeded" ? `captioned ${j.result.captioned}, kept ${j.result.kept}, failed ${j.result.failed}` : j.state);
          if (j.error) error.textContent = j.error;
          await reload();
        },
      });
    } catch (e) { error.textContent = e.message; }
  });

  render(dataset);
})();
