// Shared by both labelling pages: CSRF-protected JSON calls, progress and time (this session, in total,
// left at the annotator's pace), the reference strip with the class guide, the review list and the
// end-of-queue page.
"use strict";

const Labelling = (() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const REFERENCE_SEEN = "cmr-labelling-reference-seen";
  const CLASS_NAMES = { too_basal: "Too basal", lv: "LV", too_apical: "Too apical" };
  let progress = null;
  let shownAt = Date.now();

  async function post(url, body) {
    return call(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    });
  }

  async function get(url) {
    return call(url, { method: "GET" });
  }

  async function call(url, options) {
    const response = await fetch(url, { ...options, credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) {
      window.location.assign("/login");
      throw new Error("Your session ended; please log in again.");
    }
    const data = await response.json().catch(() => ({ error: "unexpected answer from the server" }));
    if (!response.ok) {
      const failure = new Error(data.error || response.statusText);
      failure.status = response.status;
      throw failure;
    }
    return data;
  }

  function clock(seconds) {
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const pad = (n) => String(n).padStart(2, "0");
    return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
  }

  function minutes(seconds) {
    return seconds < 90 ? `${Math.max(1, Math.round(seconds))} s` : `${Math.round(seconds / 60)} min`;
  }

  function renderTime() {
    const text = document.getElementById("time-text");
    if (!text || !progress) return;
    const open = progress.done < progress.total ? (Date.now() - shownAt) / 1000 : 0;
    const used = progress.seconds_used + open;
    text.textContent = `${clock(used)} of ${clock(progress.budget_s)} used`;
    text.classList.toggle("over", used > progress.budget_s);
    document.getElementById("session-text").textContent =
      `this session ${progress.session_done} in ${clock(progress.session_seconds + open)}`;
  }

  function showProgress(next) {
    progress = next;
    shownAt = Date.now();
    document.getElementById("progress-text").textContent = `${progress.done} of ${progress.total} done`;
    const share = progress.total ? (100 * progress.done) / progress.total : 100;
    document.getElementById("progress-fill").style.width = `${share}%`;
    const left = progress.seconds_left_estimate;
    document.getElementById("eta-text").textContent = progress.done >= progress.total ? ""
      : left === null ? "time left: after a first answer" : `~${minutes(left)} left at your pace`;
    renderTime();
  }

  // ------------------------------------------------------------ panels (reference, review)
  function togglePanel(panel, show, returnFocus) {
    const open = show === undefined ? panel.hidden : show;
    panel.hidden = !open;
    if (open) panel.querySelector("h2").focus();
    else if (returnFocus) returnFocus();
    return open;
  }

  // The reference strip: typical images of each class from this campaign, with the guide. Shown on
  // the first visit (remembered in this browser), and with the key G or its button at any time.
  function setUpReference(returnFocus) {
    const panel = document.getElementById("reference");
    const strip = document.getElementById("reference-strip");
    let loaded = null;

    async function load() {
      const data = await get("/api/reference");
      if (!data.examples.length) {
        strip.replaceChildren(Object.assign(document.createElement("p"), {
          className: "hint", textContent: "No examples yet: they appear once the campaign has reference or confident labels.",
        }));
        return;
      }
      const figures = await Promise.all(data.examples.map(async (example) => {
        const figure = document.createElement("figure");
        figure.className = `example zone-${example.label}`;
        const canvas = document.createElement("canvas");
        canvas.setAttribute("role", "img");
        canvas.setAttribute("aria-label", `Example: ${CLASS_NAMES[example.label]}`);
        await new Viewer.ImageView(canvas).load(example.image, example.crop).catch(() => undefined);
        const caption = document.createElement("figcaption");
        caption.textContent = CLASS_NAMES[example.label];
        figure.append(canvas, caption);
        return figure;
      }));
      strip.replaceChildren(...figures);
    }

    function toggle(show) {
      if (!loaded) loaded = load().catch((failure) => { strip.textContent = failure.message; });
      const open = togglePanel(panel, show, returnFocus);
      if (open) window.localStorage.setItem(REFERENCE_SEEN, "1");
      return open;
    }

    document.getElementById("reference-button").addEventListener("click", () => toggle());
    panel.querySelector(".close").addEventListener("click", () => toggle(false));
    if (!window.localStorage.getItem(REFERENCE_SEEN)) toggle(true);
    return toggle;
  }

  // The review list: this annotator's last answers (newest first), with undo for the last one.
  function setUpReview(strategy, describe, undo, returnFocus) {
    const panel = document.getElementById("review");
    const list = document.getElementById("review-list");

    async function refresh() {
      if (panel.hidden) return;
      const { answers } = await get(`/api/${strategy}/recent`);
      if (!answers.length) {
        list.replaceChildren(Object.assign(document.createElement("li"), { className: "hint", textContent: "No answers yet." }));
        return;
      }
      list.replaceChildren(...answers.map((answer) => {
        const li = document.createElement("li");
        li.className = "review-item";
        const when = new Date(answer.submitted_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
        const meta = document.createElement("p");
        meta.className = "review-meta";
        meta.textContent = `${when} · ${clock(answer.seconds)}${answer.superseded ? " · replaced by a later answer" : ""}`;
        li.append(meta, describe(answer));
        if (answer.undoable) {
          const button = document.createElement("button");
          button.type = "button";
          button.textContent = "Undo this answer";
          button.addEventListener("click", undo);
          li.append(button);
        }
        return li;
      }));
    }

    function toggle(show) {
      const open = togglePanel(panel, show, returnFocus);
      if (open) refresh().catch((failure) => { list.textContent = failure.message; });
      return open;
    }

    document.getElementById("review-button").addEventListener("click", () => toggle());
    panel.querySelector(".close").addEventListener("click", () => toggle(false));
    return { toggle, refresh };
  }

  // The end of the queue: what was done, in how long, and where to go next.
  function showFinished(noun) {
    const section = document.getElementById("finished");
    document.getElementById("finished-title").textContent = `All ${progress.total} ${noun} are done. Thank you!`;
    const pace = progress.seconds_per_task === null ? "" : `, ${clock(progress.seconds_per_task)} per task on average`;
    document.getElementById("finished-text").textContent =
      `${clock(progress.seconds_used)} of labelling in total${pace}; this session ${progress.session_done} in ` +
      `${clock(progress.session_seconds)}.`;
    section.hidden = false;
    document.getElementById("finished-title").focus();
  }

  // Keys shared by both pages; returns true when the key was handled.
  function panelKeys(event, reference, review) {
    if (event.ctrlKey || event.metaKey || event.altKey) return false;
    if (event.key === "g" || event.key === "G") reference();
    else if (event.key === "h" || event.key === "H") review.toggle();
    else if (event.key === "Escape" && event.target.closest(".panel")) {
      if (event.target.closest("#reference")) reference(false);
      else review.toggle(false);
    } else return false;
    event.preventDefault();
    return true;
  }

  window.setInterval(renderTime, 1000);
  // One answer or undo in flight at a time: save, say so, show what comes next and refresh the review
  // list; when the ticket went stale (404/409) show the current task instead.
  function answerSender({ strategy, message, show, refresh, setBusy = () => {} }) {
    let busy = false;
    return async function send(url, body, describe) {
      if (busy) return;
      busy = true;
      setBusy(true);
      message.textContent = "Saving…";
      try {
        const data = await post(url, body);
        message.textContent = describe(data);
        await show(data);
        await refresh();
      } catch (failure) {
        message.textContent = `Not saved: ${failure.message}`;
        if (failure.status === 404 || failure.status === 409) await show(await get(`/api/${strategy}/next`));
      } finally {
        busy = false;
        setBusy(false);
      }
    };
  }

  return { get, post, answerSender, showProgress, setUpReference, setUpReview, showFinished, panelKeys, CLASS_NAMES };
})();
