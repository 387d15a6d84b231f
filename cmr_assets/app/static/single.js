// Single-image page: keys 1/2/3 answer, A flags an artefact, X marks unusable, U undoes the last answer;
// window/level, zoom and pan on the image itself.
"use strict";

(() => {
  const canvas = document.getElementById("image");
  const view = new Viewer.ImageView(canvas);
  const task = document.getElementById("task");
  const artefact = document.getElementById("artefact");
  const undoButton = document.getElementById("undo");
  const message = document.getElementById("message");
  const answerButtons = Array.from(document.querySelectorAll("button.answer"));
  const NAMES = { too_basal: "too basal", lv: "LV", too_apical: "too apical" };
  let ticket = null;

  // The progress line changes last, when the next image is shown and keys are accepted again.
  async function show(data) {
    undoButton.disabled = !data.can_undo;
    if (!data.task) {
      ticket = null;
      canvas.hidden = true;
      answerButtons.forEach((button) => { button.disabled = true; });
      Labelling.showProgress(data.progress);
      Labelling.showFinished("images");
      return;
    }
    const next = new Viewer.ImageView(document.createElement("canvas"));
    await next.load(data.task.images[0], data.task.crops[0]);
    view.mirror(next); // a new scan: window/level, crop and zoom start afresh
    canvas.hidden = false;
    answerButtons.forEach((button) => { button.disabled = false; });
    document.getElementById("finished").hidden = true;
    ticket = data.task.ticket;
    artefact.checked = false;
    Labelling.showProgress(data.progress);
  }

  const sendAnswer = Labelling.answerSender({ strategy: "single", message, show, refresh: () => review.refresh() });
  async function send(url, body, describe) {
    if (!ticket && url.endsWith("/submit")) return;
    await sendAnswer(url, body, describe);
  }

  async function answer(label) {
    const flagged = artefact.checked || label === null;
    await send("/api/single/submit", { ticket, label, artefact: flagged },
      (d) => d.duplicate ? "Already saved." : `Saved: ${label ? NAMES[label] : "unusable"}${flagged && label ? " (artefact)" : ""}.`);
  }

  async function undo() {
    if (!undoButton.disabled) {
      await send("/api/single/undo", {}, () => "Last answer undone: label this image again.");
    }
  }

  answerButtons.forEach((button) => button.addEventListener("click", () => answer(button.dataset.label)));
  document.getElementById("unusable").addEventListener("click", () => answer(null));
  undoButton.addEventListener("click", undo);

  const imageWindow = new Viewer.WindowLevel(task, () => [view], () => view);
  const zoomKeys = Viewer.zoomAndPan(view, canvas);
  const backToImage = () => canvas.focus();
  const reference = Labelling.setUpReference(backToImage);
  const review = Labelling.setUpReview("single", (entry) => {
    const figure = document.createElement("figure");
    figure.className = "review-single";
    const img = document.createElement("img");
    img.src = `/img/${entry.ticket}/0`;
    const said = entry.label ? NAMES[entry.label] : "unusable";
    img.alt = `Answered ${said}`;
    const caption = document.createElement("figcaption");
    caption.textContent = `${said}${entry.artefact && entry.label ? " (artefact)" : ""}`;
    figure.append(img, caption);
    return figure;
  }, undo, backToImage);

  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.metaKey) return;
    if (Labelling.panelKeys(event, reference, review)) return;
    if (event.ctrlKey) {
      if (event.key === "z") { event.preventDefault(); undo(); }
      return;
    }
    const labels = { 1: "too_basal", 2: "lv", 3: "too_apical" };
    if (labels[event.key]) { event.preventDefault(); answer(labels[event.key]); }
    else if (event.key === "a" || event.key === "A") { event.preventDefault(); artefact.checked = !artefact.checked; }
    else if (event.key === "x" || event.key === "X") { event.preventDefault(); answer(null); }
    else if (event.key === "u" || event.key === "U") { event.preventDefault(); undo(); }
    else if (!zoomKeys(event)) imageWindow.handleKey(event);
  });

  Labelling.get("/api/single/next").then(show).catch((failure) => { message.textContent = failure.message; });
})();
