"use strict";
(() => {
  const form = document.getElementById("create"), error = document.getElementById("error");
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    error.textContent = "";
    try {
      const o = sd.formObject(form);
      const d = await sd.api("POST", "/api/datasets", { name: o.name, instance_prompt: o.instance_prompt || null, class_prompt: o.class_prompt || null, repeats: o.repeats || 10 });
      location.href = `/datasets/${sd.enc(d.name)}`;
    } catch (e) { error.textContent = e.message; }
  });
})();
