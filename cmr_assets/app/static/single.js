// Single-image page: keys 1/2/3 answer, A flags an artefact, X marks unusable, U undoes the last answer.
"use strict";

(() => {
  const image = document.getElementById("image");
  const artefact = document.getElementById("artefact");
  const undoButton = document.getElementById("undo");
  const message = document.getElementById("message");
  const answerButtons = Array.from(document.querySelectorAll("button.answer"));
  const NAMES = { too_basal: "too basal", lv: "LV", too_apical: "too apical" };
  let ticket = null;
  let busy = false;

  // The progress line changes last, when the next image is shown and keys are accepted again.
  async function show(data) {
    if (!data.task) {
      ticket = null;
      image.hidden = true;
      message.textContent = "All your images are done. Thank you!";
    } else {
      const next = new Image();
      next.src = data.task.images[0];
      await Labelling.decodeAll([next]);
      image.src = next.src;
      image.hidden = false;
      ticket = data.task.ticket;
      artefact.checked = false;
    }
    Labelling.showProgress(data.progress);
  }

  async function send(url, body, describe, canUndoAfter) {
    if (busy || (!ticket && url.endsWith("/submit"))) return;
    busy = true;
    try {
      const data = await Labelling.post(url, body);
      message.textContent = describe(data);
      undoButton.disabled = !canUndoAfter(data);
      await show(data);
    } catch (failure) {
      message.textContent = `Not saved: ${failure.message}`;
      if (failure.status === 404 || failure.status === 409) await show(await Labelling.get("/api/single/next"));
    } finally {
      busy = false;
    }
  }

  async function answer(label) {
    const flagged = artefact.checked || label === null;
    await send("/api/single/submit", { ticket, label, artefact: flagged },
      (d) => d.duplicate ? "Already saved." : `Saved: ${label ? NAMES[label] : "unusable"}${flagged && label ? " (artefact)" : ""}.`,
      (d) => !d.duplicate || !undoButton.disabled);
  }

  async function undo() {
    await send("/api/single/undo", {}, () => "Last answer undone: label this image again.", () => false);
  }

  answerButtons.forEach((button) => button.addEventListener("click", () => answer(button.dataset.label)));
  document.getElementById("unusable").addEventListener("click", () => answer(null));
  undoButton.addEventListener("click", undo);

  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.metaKey) return;
    if (event.ctrlKey) {
      if (event.key === "z" && !undoButton.disabled) { event.preventDefault(); undo(); }
      return;
    }
    const labels = { 1: "too_basal", 2: "lv", 3: "too_apical" };
    if (labels[event.key]) { event.preventDefault(); answer(labels[event.key]); }
    else if (event.key === "a" || event.key === "A") { event.preventDefault(); artefact.checked = !artefact.checked; }
    else if (event.key === "x" || event.key === "X") { event.preventDefault(); answer(null); }
    else if ((event.key === "u" || event.key === "U") && !undoButton.disabled) { event.preventDefault(); undo(); }
  });

  Labelling.get("/api/single/next").then(show).catch((failure) => { message.textContent = failure.message; });
})();
