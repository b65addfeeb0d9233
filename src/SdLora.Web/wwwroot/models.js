// Models page: the merge form posts a merge job and opens its page.
"use strict";
(() => {
  const form = document.getElementById("merge");
  if (!form) return;
  const error = document.getElementById("merge-error");
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    error.textContent = "";
    const loras = [...form.querySelectorAll("input[name=lora]:checked")].map(box => ({
      name: box.value,
      weight: Number(form.querySelector(`input[name=weight][data-lora="${CSS.escape(box.value)}"]`).value),
    }));
    if (loras.length === 0) { error.textContent = "choose at least one LoRA"; return; }
    const body = { name: form.elements.namedItem("name").value.trim(), loras, model: form.model.value, fp16: form.fp16.checked };
    try {
      const job = await sd.api("POST", "/api/merge", body);
      location.href = `/jobs/${sd.enc(job.id)}`;
    } catch (e) { error.textContent = e.message; }
  });
})();
