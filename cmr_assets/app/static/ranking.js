// Ranking page: order 8 images most basal first and place two dividers, by pointer drag or keyboard.
"use strict";

(() => {
  const strip = document.getElementById("strip");
  const submitButton = document.getElementById("submit");
  const message = document.getElementById("message");
  const lightbox = document.getElementById("lightbox");
  const lightboxImg = document.getElementById("lightbox-img");
  const ZONES = [["zone-basal", "too basal"], ["zone-lv", "LV"], ["zone-apical", "too apical"]];
  const DRAG_THRESHOLD_PX = 6;
  let ticket = null;
  let busy = false;
  let drag = null;

  // ------------------------------------------------------------ building a batch
  function imageItem(url, index) {
    const li = document.createElement("li");
    li.className = "card item";
    li.tabIndex = 0;
    li.dataset.index = String(index);
    li.dataset.kind = "image";
    const img = document.createElement("img");
    img.src = url;
    img.alt = "Short-axis slice";
    img.draggable = false;
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
    li.append(img, rank, zone, flag);
    return li;
  }

  function dividerItem() {
    const li = document.createElement("li");
    li.className = "divider item";
    li.tabIndex = 0;
    li.dataset.kind = "divider";
    li.setAttribute("role", "separator");
    const label = document.createElement("span");
    label.className = "divider-label";
    li.append(label);
    return li;
  }

  // The progress line changes last, when the next batch is on screen and ready for input.
  async function show(data) {
    if (!data.task) {
      ticket = null;
      strip.replaceChildren();
      submitButton.hidden = true;
      message.textContent = "All your batches are done. Thank you!";
    } else {
      const cards = data.task.images.map(imageItem);
      await Labelling.decodeAll(cards.map((li) => li.querySelector("img")));
      ticket = data.task.ticket;
      strip.replaceChildren(dividerItem(), ...cards, dividerItem());
      submitButton.hidden = false;
      refresh();
      cards[0].focus();
    }
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

  function toggleArtefact(li) {
    if (li.dataset.kind !== "image") return;
    const flagged = li.classList.toggle("artefact");
    li.querySelector(".flag-button").setAttribute("aria-pressed", String(flagged));
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

  // ------------------------------------------------------------ enlarge
  function enlarge(li) {
    if (li.dataset.kind !== "image") return;
    lightboxImg.src = li.querySelector("img").src;
    lightbox.hidden = false;
    lightbox.dataset.returnTo = li.dataset.index;
    lightbox.focus();
  }

  function closeLightbox() {
    lightbox.hidden = true;
    const li = strip.querySelector(`li[data-index="${lightbox.dataset.returnTo}"]`);
    if (li) li.focus();
  }
  lightbox.tabIndex = -1;
  lightbox.addEventListener("click", closeLightbox);

  // ------------------------------------------------------------ submit
  async function submit() {
    if (busy || !ticket) return;
    busy = true;
    submitButton.disabled = true;
    message.textContent = "Saving…";
    try {
      const data = await Labelling.post("/api/ranking/submit", answer());
      message.textContent = data.duplicate ? "Already saved." : "Saved.";
      await show(data);
    } catch (failure) {
      message.textContent = `Not saved: ${failure.message}`;
      if (failure.status === 404 || failure.status === 409) await show(await Labelling.get("/api/ranking/next"));
    } finally {
      busy = false;
      submitButton.disabled = false;
    }
  }
  submitButton.addEventListener("click", submit);

  document.addEventListener("keydown", (event) => {
    if (!lightbox.hidden && (event.key === "Escape" || event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      closeLightbox();
    } else if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      submit();
    }
  });

  Labelling.get("/api/ranking/next").then(show).catch((failure) => { message.textContent = failure.message; });
})();
