// Ranking page: order 8 images most basal first and place two dividers, by pointer drag or keyboard;
// window/level for the whole batch, an enlarged view with zoom and pan, undo of the last batch.
"use strict";

(() => {
  const strip = document.getElementById("strip");
  const submitButton = document.getElementById("submit");
  const undoButton = document.getElementById("undo");
  const message = document.getElementById("message");
  const lightbox = document.getElementById("lightbox");
  const lightboxView = new Viewer.ImageView(document.getElementById("lightbox-canvas"));
  const ZONES = [["zone-basal", "too basal"], ["zone-lv", "LV"], ["zone-apical", "too apical"]];
  const DRAG_THRESHOLD_PX = 6;
  const views = new Map(); // card li -> its ImageView
  let ticket = null;
  let drag = null;

  // ------------------------------------------------------------ building a batch
  async function imageItem(url, index, crop) {
    const li = document.createElement("li");
    li.className = "card item";
    li.tabIndex = 0;
    li.dataset.index = String(index);
    li.dataset.kind = "image";
    const canvas = document.createElement("canvas");
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", "Short-axis slice");
    const rank = document.createElement("span");
    rank.className = "rank";
    const zone = document.createElement("span");
    zone.className = "zone-label";
    const flag = document.createElement("button");
    flag.type = "button";
    flag.className = "flag-button";
    flag.textContent = "Artefact";
    flag.setAttribute("aria-pressed", "false");
    flag.tabIndex = -1;
    flag.addEventListener("click", (event) => { event.stopPropagation(); toggleArtefact(li); });
    flag.addEventListener("pointerdown", (event) => event.stopPropagation());
    li.append(canvas, rank, zone, flag);
    views.set(li, await new Viewer.ImageView(canvas).load(url, crop));
    return li;
  }

  function dividerItem() {
    const li = document.createElement("li");
    li.className = "divider item";
    li.tabIndex = 0;
    li.dataset.kind = "divider";
    const label = document.createElement("span");
    label.className = "divider-label";
    li.append(label);
    return li;
  }

  // A fresh batch: dividers at both ends. A batch taken back by undo: as it was answered.
  function arrange(cards, initial) {
    if (!initial) return [dividerItem(), ...cards, dividerItem()];
    initial.artefacts.forEach((index) => setArtefact(cards[index], true));
    const [first, second] = initial.dividers;
    return [...cards.slice(0, first), dividerItem(), ...cards.slice(first, second), dividerItem(), ...cards.slice(second)];
  }

  // The progress line changes last, when the next batch is on screen and ready for input.
  async function show(data) {
    undoButton.disabled = !data.can_undo;
    if (!data.task) {
      ticket = null;
      views.clear();
      strip.replaceChildren();
      strip.hidden = true;
      submitButton.hidden = true;
      Labelling.showProgress(data.progress);
      Labelling.showFinished("batches");
      return;
    }
    const { images, crops, initial } = data.task;
    const cards = await Promise.all(images.map((url, i) => imageItem(url, i, crops[i])));
    views.forEach((_, li) => { if (!cards.includes(li)) views.delete(li); });
    ticket = data.task.ticket;
    strip.replaceChildren(...arrange(cards, initial));
    strip.hidden = false;
    submitButton.hidden = false;
    document.getElementById("finished").hidden = true;
    refresh();
    if (document.getElementById("reference").hidden) cards[0].focus(); // else the guide keeps the focus
    Labelling.showProgress(data.progress);
  }

  // ------------------------------------------------------------ state read from the DOM order
  function items() {
    return Array.from(strip.children);
  }

  function refresh() {
    let zone = 0;
    let rank = 0;
    for (const li of items()) {
      if (li.dataset.kind === "divider") {
        zone += 1;
        const starts = zone === 1;
        li.querySelector(".divider-label").textContent = starts ? "LV starts" : "LV ends";
        li.setAttribute("aria-label", starts ? "Divider: LV starts here" : "Divider: LV ends here");
        continue;
      }
      rank += 1;
      const [zoneClass, zoneName] = ZONES[zone];
      li.classList.remove(...ZONES.map(([name]) => name));
      li.classList.add(zoneClass);
      li.querySelector(".rank").textContent = String(rank);
      li.querySelector(".zone-label").textContent = zoneName;
      const flagged = li.classList.contains("artefact") ? ", flagged artefact" : "";
      li.setAttribute("aria-label", `Image at position ${rank}, ${zoneName}${flagged}`);
    }
  }

  function answer() {
    const order = [];
    const dividers = [];
    const artefacts = [];
    for (const li of items()) {
      if (li.dataset.kind === "divider") {
        dividers.push(order.length);
      } else {
        order.push(Number(li.dataset.index));
        if (li.classList.contains("artefact")) artefacts.push(Number(li.dataset.index));
      }
    }
    return { ticket, order, dividers, artefacts };
  }

  function setArtefact(li, flagged) {
    li.classList.toggle("artefact", flagged);
    li.querySelector(".flag-button").setAttribute("aria-pressed", String(flagged));
  }

  function toggleArtefact(li) {
    if (li.dataset.kind !== "image") return;
    setArtefact(li, !li.classList.contains("artefact"));
    refresh();
  }

  // ------------------------------------------------------------ moving items
  function moveTo(li, position) {
    const others = items().filter((other) => other !== li);
    const clamped = Math.max(0, Math.min(others.length, position));
    strip.insertBefore(li, others[clamped] || null);
    refresh();
  }

  function moveBy(li, step) {
    moveTo(li, items().indexOf(li) + step);
    li.focus();
  }

  strip.addEventListener("keydown", (event) => {
    const li = event.target.closest("li.item");
    if (!li || event.ctrlKey || event.metaKey || event.altKey) return;
    const actions = {
      ArrowLeft: () => moveBy(li, -1),
      ArrowUp: () => moveBy(li, -1),
      ArrowRight: () => moveBy(li, 1),
      ArrowDown: () => moveBy(li, 1),
      Home: () => { moveTo(li, 0); li.focus(); },
      End: () => { moveTo(li, items().length); li.focus(); },
      a: () => toggleArtefact(li),
      A: () => toggleArtefact(li),
      Enter: () => enlarge(li),
      " ": () => enlarge(li),
    };
    if (actions[event.key]) {
      event.preventDefault();
      event.stopPropagation();
      actions[event.key]();
    }
  });

  strip.addEventListener("pointerdown", (event) => {
    const li = event.target.closest("li.item");
    if (!li || event.button !== 0) return;
    drag = { li, x: event.clientX, y: event.clientY, moving: false, pointerId: event.pointerId };
  });

  strip.addEventListener("pointermove", (event) => {
    if (!drag) return;
    if (!drag.moving) {
      if (Math.hypot(event.clientX - drag.x, event.clientY - drag.y) < DRAG_THRESHOLD_PX) return;
      drag.moving = true;
      drag.li.classList.add("dragging");
      strip.setPointerCapture(drag.pointerId);
    }
    const target = items().find((other) => {
      if (other === drag.li) return false;
      const r = other.getBoundingClientRect();
      return event.clientX >= r.left && event.clientX <= r.right && event.clientY >= r.top && event.clientY <= r.bottom;
    });
    if (!target) return;
    const r = target.getBoundingClientRect();
    const after = event.clientX > r.left + r.width / 2;
    const others = items().filter((other) => other !== drag.li);
    moveTo(drag.li, others.indexOf(target) + (after ? 1 : 0));
  });

  function endDrag(event) {
    if (!drag) return;
    const { li, moving } = drag;
    drag = null;
    li.classList.remove("dragging");
    if (strip.hasPointerCapture(event.pointerId)) strip.releasePointerCapture(event.pointerId);
    if (moving) li.focus();
    else if (event.type === "pointerup") enlarge(li);
  }
  strip.addEventListener("pointerup", endDrag);
  strip.addEventListener("pointercancel", endDrag);

  // ------------------------------------------------------------ image adjustment
  const focusedView = () => views.get(document.activeElement) || null;
  const batchWindow = new Viewer.WindowLevel(strip, () => Array.from(views.values()), focusedView);
  const lightboxWindow = new Viewer.WindowLevel(lightbox, () => [lightboxView], () => lightboxView);
  const lightboxZoomKeys = Viewer.zoomAndPan(lightboxView, lightbox);

  // ------------------------------------------------------------ enlarge
  function enlarge(li) {
    if (li.dataset.kind !== "image") return;
    lightbox.hidden = false;
    lightboxView.mirror(views.get(li));
    lightbox.dataset.returnTo = li.dataset.index;
    lightbox.focus();
  }

  function closeLightbox() {
    lightbox.hidden = true;
    const li = strip.querySelector(`li[data-index="${lightbox.dataset.returnTo}"]`);
    if (li) li.focus();
  }
  lightbox.tabIndex = -1;
  lightbox.addEventListener("click", (event) => { if (event.target === lightbox) closeLightbox(); });

  // ------------------------------------------------------------ submit and undo
  const send = Labelling.answerSender({
    strategy: "ranking", message, show, refresh: () => review.refresh(),
    setBusy: (busy) => { submitButton.disabled = busy; },
  });

  function submit() {
    if (ticket) send("/api/ranking/submit", answer(), (data) => (data.duplicate ? "Already saved." : "Saved."));
  }

  function undo() {
    if (!undoButton.disabled) {
      send("/api/ranking/undo", {}, () => "Last batch taken back: change it and submit again.");
    }
  }
  submitButton.addEventListener("click", submit);
  undoButton.addEventListener("click", undo);

  // ------------------------------------------------------------ panels
  const backToBatch = () => { const first = strip.querySelector("li.card"); if (first) first.focus(); };
  const reference = Labelling.setUpReference(backToBatch);
  const review = Labelling.setUpReview("ranking", (entry) => {
    const row = document.createElement("ol");
    row.className = "review-batch";
    entry.order.forEach((index, position) => {
      if (entry.dividers.includes(position)) row.append(Object.assign(document.createElement("li"), { className: "review-divider" }));
      const li = document.createElement("li");
      const img = document.createElement("img");
      img.src = `/img/${entry.ticket}/${index}`;
      const zone = position < entry.dividers[0] ? "too basal" : position < entry.dividers[1] ? "LV" : "too apical";
      const flagged = entry.artefacts.includes(index) ? ", artefact" : "";
      img.alt = `Position ${position + 1}, ${zone}${flagged}`;
      li.append(img);
      row.append(li);
    });
    if (entry.dividers.includes(entry.order.length)) row.append(Object.assign(document.createElement("li"), { className: "review-divider" }));
    return row;
  }, undo, backToBatch);

  document.addEventListener("keydown", (event) => {
    if (!lightbox.hidden) {
      if (event.key === "Escape" || event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        closeLightbox();
      } else if (!lightboxZoomKeys(event)) {
        lightboxWindow.handleKey(event);
      }
      return;
    }
    if (Labelling.panelKeys(event, reference, review)) return;
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      submit();
    } else if ((event.key === "z" && event.ctrlKey) || ((event.key === "u" || event.key === "U") && !event.ctrlKey)) {
      event.preventDefault();
      undo();
    } else if (!event.target.closest("input, textarea")) {
      batchWindow.handleKey(event);
    }
  });

  Labelling.get("/api/ranking/next").then(show).catch((failure) => { message.textContent = failure.message; });
})();
