"use strict";
(() => {
  const form = document.getElementById("gen"), error = document.getElementById("error"), progress = document.getElementById("progress");
  const gallery = document.getElementById("gallery"), detail = document.getElementById("detail");
  let lastSeed = null, current = null;

  document.getElementById("seed-random").onclick = () => form.seed.value = -1;
  document.getElementById("seed-last").onclick = () => { if (lastSeed != null) form.seed.value = lastSeed; };
  document.getElementById("lora-add").onclick = () => {
    const name = document.getElementById("lora-pick").value, w = document.getElementById("lora-weight").value || "1";
    if (!name) return;
    const p = form.prompt;
    p.value = (p.value.trim() + ` <lora:${name}:${w}>`).trim();
    p.focus();
  };
  document.getElementById("interrupt").onclick = () => sd.api("POST", "/sdapi/v1/interrupt").catch(e => error.textContent = e.message);

  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    error.textContent = "";
    const body = sd.formObject(form);
    try {
      const job = await sd.api("POST", "/api/generate", body);
      current = job.id;
      sd.showProgress(progress, null, "queued");
      sd.watchJob(job.id, {
        progress: e => sd.showProgress(progress, e.progress, e.progress.phase === "sampling" ? `step ${e.progress.done}/${e.progress.total} · ${e.progress.label}` : undefined),
        end: async j => {
          progress.hidden = true;
          if (j.state === "failed") error.textContent = j.error;
          const images = (j.result && j.result.images) || [];
          if (images.length) { lastSeed = images[0].seed; }
          await loadGallery();
          if (images.length) show(images[0].file);
        },
      });
    } catch (e) { error.textContent = e.message; }
  });

  async function loadGallery() {
    const items = await sd.api("GET", "/api/outputs?limit=60");
    gallery.replaceChildren(...items.map(o => sd.el("figure", { "data-file": o.file, onclick: () => show(o.file) },
      sd.el("img", { src: `/files/outputs/${sd.enc(o.file)}`, alt: o.file, loading: "lazy" }),
      sd.el("figcaption", { text: o.seed != null ? `seed ${o.seed}` : o.file }))));
  }

  async function show(file) {
    const o = await sd.api("GET", `/api/outputs/${sd.enc(file)}`);
    detail.hidden = false;
    const use = sd.el("button", { type: "button", text: "Use these settings again", onclick: () => reuse(o.parameters) });
    detail.replaceChildren(
      sd.el("img", { src: `/files/outputs/${sd.enc(o.file)}`, alt: o.file }),
      sd.el("div", { class: "meta" },
        sd.el("pre", { class: "infotext", text: o.infotext || "(no parameters)" }),
        sd.el("div", { class: "actions" }, use, sd.el("a", { class: "button", href: `/files/outputs/${sd.enc(o.file)}?download=true`, text: "Download" }))));
  }

  function reuse(p) {
    if (!p) return;
    form.prompt.value = p.prompt; form.negative_prompt.value = p.negative_prompt; form.steps.value = p.steps;
    form.cfg_scale.value = p.cfg_scale; form.seed.value = p.seed; form.width.value = p.width; form.height.value = p.height;
    form.clip_skip.value = p.clip_skip;
    for (const o of form.sampler_name.options) if (o.value === p.sampler) form.sampler_name.value = p.sampler;
    for (const o of form.model.options) if (o.value.replace(/\.(safetensors|ckpt)$/, "") === p.model || o.value === p.model) form.model.value = o.value;
    window.scrollTo({ top: 0, behavior: "smooth" });
  }

  loadGallery().catch(e => error.textContent = e.message);
})();
