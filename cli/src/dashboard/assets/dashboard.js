// ccfleet dashboard: the live parts. Everything else works without this file.
"use strict";

// A rollout page follows the server's watch stream: each event carries the
// rendered live part of the page.
function followRollout() {
  const live = document.querySelector("[data-live]");
  if (!live || !window.EventSource) return;
  const note = document.getElementById("live-note");
  const source = new EventSource(live.dataset.live);
  source.addEventListener("rollout", (event) => {
    live.innerHTML = event.data;
  });
  source.addEventListener("end", () => {
    source.close();
    if (note) note.textContent = "The rollout has settled; the page no longer changes.";
  });
  source.addEventListener("failure", (event) => {
    source.close();
    if (note) note.textContent = event.data + " (reload the page to follow again)";
  });
}

// Other pages fetch themselves again and swap the refreshable part in place,
// keeping the scroll position and the keyboard focus.
function refreshInPlace() {
  const first = document.querySelector("[data-refresh]");
  if (!first) return;
  const seconds = Math.max(2, parseInt(first.dataset.refresh, 10) || 10);
  setInterval(async () => {
    if (document.hidden) return;
    try {
      const answer = await fetch(window.location.href, { credentials: "same-origin" });
      if (!answer.ok) return;
      const fresh = new DOMParser().parseFromString(await answer.text(), "text/html").querySelector("[data-refresh]");
      const current = document.querySelector("[data-refresh]");
      if (fresh && current && !current.contains(document.activeElement)) current.replaceWith(fresh);
    } catch (_) {
      // The dashboard stopped or the network went away: the page stays as it was.
    }
  }, seconds * 1000);
}

followRollout();
refreshInPlace();
