"use strict";
(() => {
  const { datasets } = sd.pageData();
  const form = document.getElementById("train"), error = document.getElementById("error");

  form.dataset.addEventListener("change", () => {
    const d = datasets.find(x => x.name === form.dataset.value);
    if (!d) return;
    form["instance-prompt"].value = d.settings.instance_prompt ?? "";
    form["class-prompt"].value = d.settings.class_prompt ?? "";
    form["num-repeats"].value = d.settings.repeats ?? 10;
  });

  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    error.textContent = "";
    for (const e of form.querySelectorAll(".field-error")) e.textContent = "";
    for (const e of form.querySelectorAll(".invalid")) e.classList.remove("invalid");
    const settings = {};
    for (const el of form.elements) {
      if (!el.name || ["run", "dataset", "model", "sample_prompts"].includes(el.name)) continue;  // the rest are train flags
      if (el.type === "checkbox") settings[el.name] = String(el.checked);
      else if (el.value.trim() !== "") settings[el.name] = el.value.trim();
    }
    const body = { run: form.run.value.trim(), dataset: form.dataset.value, model: form.model.value, settings, sample_prompts: form.sample_prompts.value };
    try {
      await sd.api("POST", "/api/train", body);
      location.href = `/runs/${sd.enc(body.run)}`;
    } catch (e) {
      // The library's messages name the setting (network-dim ...): show the message next to that field.
      const field = [...form.querySelectorAll("[data-flag]")]
        .find(f => new RegExp(`(^|[^a-z-])${f.dataset.flag}([^a-z-]|$)`).test(e.message));
      if (field) {
        field.querySelector(".field-error").textContent = e.message;
        field.classList.add("invalid");
        if (field.closest("details")) field.closest("details").open = true;
        field.scrollIntoView({ block: "center" });
      } else error.textContent = e.message;
    }
  });
})();
