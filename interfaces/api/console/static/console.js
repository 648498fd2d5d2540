// The console's only script: confirmation of actions, and the overview's live figures.
// Served from the console's own origin (the pages' Content-Security-Policy allows no other,
// and no inline script).
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

function setField(name, value) {
  for (const element of document.querySelectorAll(`[data-field="${name}"]`)) {
    element.textContent = value;
  }
}

let previous = null; // {count, at}: the last refresh's transfers so far, for the live rate

async function refreshOverview(panel) {
  const status = panel.querySelector("[data-status]");
  try {
    const response = await fetch("/console/overview.json", { credentials: "same-origin" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const figures = await response.json();
    setField("transfers_last_hour", String(figures.transfers_last_hour));
    let count = 0;
    for (const metrics of Object.values(figures.totals)) count += metrics.transfers.count;
    const at = Date.now();
    if (previous !== null && at > previous.at) {
      const rate = Math.max(0, count - previous.count) / ((at - previous.at) / 1000);
      setField("live_rate", rate.toFixed(1));
    }
    previous = { count, at };
    for (const [currency, metrics] of Object.entries(figures.totals)) {
      for (const [metric, total] of Object.entries(metrics)) {
        setField(`${currency}.${metric}.count`, String(total.count));
        setField(`${currency}.${metric}.sum`, total.sum);
      }
    }
    for (const [severity, count] of Object.entries(figures.open_alerts_by_severity)) {
      setField(`alerts.${severity}`, String(count));
    }
    if (figures.projections) {
      for (const item of figures.projections.items) {
        setField(`lag.${item.name}`, `${item.lag_events} events, ${item.lag_s.toFixed(1)} s`);
      }
    }
    status.textContent = figures.stale
      ? `stale: projections behind (updated ${new Date().toLocaleTimeString()})`
      : `live, updated ${new Date().toLocaleTimeString()}`;
    status.className = figures.stale ? "stale" : "muted";
  } catch (error) {
    status.textContent = `stale: could not refresh (${error.message})`;
    status.className = "stale";
  }
}

const panel = document.querySelector("[data-live-overview]");
if (panel) {
  refreshOverview(panel);
  window.setInterval(() => refreshOverview(panel), 2000);
}
