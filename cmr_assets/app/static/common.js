// Shared by both labelling pages: CSRF-protected JSON calls and the progress / time display.
"use strict";

const Labelling = (() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  let usedSeconds = 0;
  let budgetSeconds = 0;
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

  function renderTime() {
    const text = document.getElementById("time-text");
    if (!text) return;
    const used = usedSeconds + (Date.now() - shownAt) / 1000;
    text.textContent = `${clock(used)} of ${clock(budgetSeconds)} used`;
    text.classList.toggle("over", used > budgetSeconds);
  }

  function showProgress(progress) {
    usedSeconds = progress.seconds_used;
    budgetSeconds = progress.budget_s;
    shownAt = Date.now();
    document.getElementById("progress-text").textContent = `${progress.done} of ${progress.total} done`;
    const share = progress.total ? (100 * progress.done) / progress.total : 100;
    document.getElementById("progress-fill").style.width = `${share}%`;
    renderTime();
  }

  async function decodeAll(images) {
    await Promise.all(images.map((img) => img.decode().catch(() => undefined)));
  }

  window.setInterval(renderTime, 1000);
  return { get, post, showProgress, decodeAll };
})();
