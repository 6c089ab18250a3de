// shipyard dashboard: polls the daemon's read-only endpoints and draws everything itself.
// The API token (for promote / abort / rollback) stays in this tab's sessionStorage only.
"use strict";

const STATE_EVERY_MS = 1500;
const SERIES_EVERY_MS = 1000;
const WINDOW_S = 900;
const TOKEN_KEY = "shipyard.token";
const SVG = "http://www.w3.org/2000/svg";
const TERMINAL = new Set(["succeeded", "failed", "aborted"]);

const series = new Map();      // service -> {upto, tracks: Map(slot -> Map(t -> point))}
const cards = new Map();       // service -> card element
const opened = new Set();      // verdict details shown in full (kept across redraws)
let lastState = null;
let lastOk = 0;
let busy = false;

// -- small DOM helpers ----------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function s(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") el.textContent = v; else el.setAttribute(k, String(v));
  }
  return el;
}

function clock(ts) {
  const d = new Date(ts * 1000);
  return d.toTimeString().slice(0, 8);
}

function ago(ts) {
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function ms(v) {
  if (v === null || v === undefined) return "–";
  if (v === 0) return "0";
  if (v < 1) return `${v.toFixed(2)} ms`;
  if (v < 1000) return `${v.toFixed(v < 10 ? 1 : 0)} ms`;
  return `${(v / 1000).toFixed(2)} s`;
}

function pct(v, digits = 1) {
  if (v === null || v === undefined) return "–";
  return `${(100 * v).toFixed(digits)}%`;
}

function weight(w) {
  const n = Number(w);
  return `${Number.isInteger(n) ? n : n.toFixed(2).replace(/0+$/, "")}%`;
}

function short(id) {
  return id ? id.slice(0, 12) : "–";
}

// -- the token ------------------------------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function notice(text, kind = "") {
  const el = document.getElementById("notice");
  el.textContent = text;
  el.className = `notice ${kind}`;
  el.hidden = !text;
}

function showAuth() {
  const unlocked = Boolean(token());
  const st = document.getElementById("auth-state");
  st.textContent = unlocked ? "actions enabled" : "read-only";
  st.classList.toggle("unlocked", unlocked);
  document.getElementById("token-form").hidden = unlocked;
  document.getElementById("lock").hidden = !unlocked;
  for (const b of document.querySelectorAll("button[data-action]")) updateButton(b);
}

async function unlock(ev) {
  ev.preventDefault();
  const input = document.getElementById("token");
  const candidate = input.value.trim();
  if (!candidate) return;
  const resp = await fetch("/v1/services", { headers: { Authorization: `Bearer ${candidate}` } });
  if (resp.status === 401) {
    notice("Refused: the daemon did not accept this API token (401). Actions stay disabled.", "bad");
    return;
  }
  if (!resp.ok) {
    notice(`Could not check the token: HTTP ${resp.status}`, "bad");
    return;
  }
  input.value = "";
  sessionStorage.setItem(TOKEN_KEY, candidate);
  notice("Token accepted: promote, abort and rollback are enabled in this tab.", "ok");
  showAuth();
}

function lock() {
  sessionStorage.removeItem(TOKEN_KEY);
  notice("Token forgotten: read-only.");
  showAuth();
}

// -- actions --------------------------------------------------------------------------------

const ACTIONS = {
  promote: { label: "Promote", confirm: null },
  abort: { label: "Abort", confirm: "Abort the rollout of %s? Every user goes back to the stable release." },
  rollback: { label: "Roll back", confirm: "Roll %s back to the previous release?" },
};

function allowed(action, svc) {
  const r = svc.rollout && svc.rollout.rollout;
  const active = r && !TERMINAL.has(r.phase);
  if (action === "promote") return Boolean(active && (r.strategy === "canary" || r.phase === "awaiting_promotion"));
  if (action === "abort") return Boolean(active);
  return Boolean(svc.live_slot) || Boolean(active);
}

function updateButton(b) {
  const svc = lastState && lastState.services.find((x) => x.service === b.dataset.service);
  const applicable = svc ? allowed(b.dataset.action, svc) : false;
  b.disabled = busy || !token() || !applicable;
  b.title = !token() ? "Read-only: unlock with the API token to act" : applicable ? "" : "Nothing to do now";
}

async function act(action, name) {
  const spec = ACTIONS[action];
  if (spec.confirm && !window.confirm(spec.confirm.replace("%s", name))) return;
  if (!token()) {
    notice("Read-only: unlock with the API token first.", "bad");
    return;
  }
  busy = true;
  showAuth();
  notice(`${spec.label}: ${name}…`);
  try {
    const resp = await fetch(`/v1/services/${encodeURIComponent(name)}/${action}`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token()}`, "Content-Type": "application/json",
                 "X-Shipyard-Actor": "dashboard" },
      body: "{}",
    });
    const body = await resp.json().catch(() => ({}));
    if (resp.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      notice(`Refused (401): ${body.error || "missing or wrong API token"}. Actions are disabled.`, "bad");
    } else if (!resp.ok) {
      notice(`${spec.label} refused (${resp.status}): ${body.error || ""}${body.hint ? ` — ${body.hint}` : ""}`,
             "bad");
    } else {
      const r = body.rollout || {};
      notice(`${spec.label} ${name}: rollout ${r.id || ""} is ${r.phase || "done"}`, "ok");
    }
  } catch (e) {
    notice(`${spec.label} failed: ${e}`, "bad");
  } finally {
    busy = false;
    showAuth();
    pollState();
  }
}

// -- drawing --------------------------------------------------------------------------------

function card(name) {
  let el = cards.get(name);
  if (el) return el;
  const buttons = Object.entries(ACTIONS).map(([action, spec]) =>
    h("button", { type: "button", "data-action": action, "data-service": name, disabled: true,
                  class: action === "promote" ? "" : "danger", onclick: () => act(action, name) }, spec.label));
  el = h("section", { class: "card", "data-service": name },
    h("div", { class: "card-head" },
      h("h2", { text: name }), h("span", { class: "listen" }), h("span", { class: "phase", hidden: true }),
      h("div", { class: "actions" }, buttons)),
    h("div", { class: "card-body" },
      h("div", { class: "col left" }),
      h("div", { class: "col mid" }, h("div", { class: "charts" })),
      h("div", { class: "col right" })));
  cards.set(name, el);
  return el;
}

const HOST_STATE_CLASS = { up: "ok", unreachable: "bad", lost: "bad", draining: "warn", removed: "dim" };

function drawHosts(hosts) {
  // every value set with textContent (h's "text"): host names, addresses and services are data, never markup
  const box = document.getElementById("hosts");
  if (!hosts || !hosts.length) { box.hidden = true; box.replaceChildren(); return; }
  const rows = hosts.map((x) => {
    const insts = Object.entries(x.instances || {}).map(([svc, n]) => `${svc} ${n}`).join(", ") || "0";
    const silent = x.silent_seconds ? ` (silent ${Math.round(x.silent_seconds)} s)` : "";
    return h("tr", { "data-host": x.name },
      h("td", { text: x.name }), h("td", { class: "dim", text: x.address }),
      h("td", { class: `host-state ${HOST_STATE_CLASS[x.state] || ""}`, text: x.state + silent }),
      h("td", { text: insts }));
  });
  box.hidden = false;
  box.replaceChildren(h("h3", { text: `Fleet hosts (${hosts.length})` }),
    h("table", { class: "hosts-table" },
      h("thead", {}, h("tr", {}, ...["host", "address", "state", "instances"].map((t) => h("th", { text: t })))),
      h("tbody", {}, ...rows)));
}

function drawTracks(svc) {
  const box = h("div", { class: "box tracks" }, h("h3", { text: "Tracks" }));
  for (const t of svc.tracks) {
    const idle = t.role === "idle" && !t.instances.length;
    box.append(h("div", { class: `track ${idle ? "idle" : ""}`, "data-track": t.slot },
      h("span", { class: `swatch ${t.slot}` }),
      h("span", { class: "name", text: t.slot }),
      h("span", { class: `role ${t.role}`, text: t.role === "idle" ? t.state : t.role }),
      h("span", { class: "release", title: t.image || "", text: `release ${short(t.image)}${
        t.role === "warm" && t.retire_at ? ` · warm for rollback until ${clock(t.retire_at)}` : ""}` }),
      h("div", { class: "insts" }, t.instances.length ? t.instances.map((i) =>
        h("span", { class: `inst ${i.status}`, title: `${i.id} (${i.status})`, text: `:${i.port} ${i.status}` }))
        : h("span", { class: "muted", text: "no instances" }))));
  }
  return box;
}

function drawSplit(svc) {
  const entries = Object.entries(svc.split).filter(([, w]) => w > 0).sort(([a], [b]) => {
    const role = (slot) => (svc.tracks.find((t) => t.slot === slot) || {}).role === "canary" ? 1 : 0;
    return role(a) - role(b);
  });
  const bar = h("div", { class: "split-bar", role: "img",
                         "aria-label": entries.map(([t, w]) => `${t} ${weight(w)}`).join(", ") || "no traffic" });
  for (const [t, w] of entries) {
    const seg = h("div", { class: `seg ${t}`, "data-track": t });
    seg.style.width = `${w}%`;
    bar.append(seg);
  }
  const legend = h("div", { class: "split-legend" }, entries.length ? entries.map(([t, w]) => {
    const role = (svc.tracks.find((x) => x.slot === t) || {}).role || "";
    return h("span", { class: "split-label", "data-track": t },
      h("span", { class: `swatch ${t}` }), ` ${t} ${role} `, h("span", { class: "pct", text: weight(w) }));
  }) : h("span", { class: "muted", text: "no live track: the router answers 503" }));
  return h("div", { class: "box split" }, h("h3", { text: "Traffic split" }), bar, legend,
    svc.split_source !== "router" ? h("div", { class: "muted", text: "router unreachable: recorded split" }) : null);
}

function drawDrift(svc) {
  const d = svc.drift;
  const enf = svc.enforcement;
  const state = !d ? h("span", { class: "muted", text: "not scanned yet" })
    : d.clean ? h("span", { class: "good", text: "clean" })
      : h("span", { class: "badtext", text: `${d.findings} finding${d.findings === 1 ? "" : "s"}` });
  return h("div", { class: "box drift" }, h("h3", { text: "Drift" }),
    h("dl", { class: "kv" },
      h("dt", { text: "status" }), h("dd", {}, state),
      d ? [h("dt", { text: "last scan" }), h("dd", { text: `${ago(d.scanned_at)} (${d.mode})` })] : null,
      d && d.last_full_at ? [h("dt", { text: "last full" }), h("dd", { text: ago(d.last_full_at) })] : null,
      h("dt", { text: "enforcement" }),
      h("dd", { text: enf ? Object.values(enf).join(" · ") : "unknown" })));
}

function drawDatabase(svc) {
  const db = svc.database;
  const box = h("div", { class: "box database" }, h("h3", { text: "Database" }));
  if (!db) {
    box.append(h("span", { class: "muted", text: "no database check in the recent rollouts" }));
    return box;
  }
  const verdict = db.check_ok === null ? h("span", { class: "muted", text: "no rehearsal (nothing to expand)" })
    : db.check_ok ? h("span", { class: "good", text: "rehearsal passed" })
      : h("span", { class: "badtext", text: `rehearsal failed: ${db.reasons.join("; ")}` });
  box.append(h("dl", { class: "kv" },
    h("dt", { text: "last check" }), h("dd", {}, verdict),
    h("dt", { text: "rollout" }), h("dd", { text: `${db.rollout_id}, ${ago(db.ts)}` })));
  const plan = db.events.filter((e) => e.kind === "database.plan").pop();
  if (plan) box.append(h("div", { class: "muted", text: plan.message }));
  return box;
}

function stepLabel(step) {
  if (step.set_weight !== undefined) return `${step.set_weight}%`;
  if (step.pause !== undefined) {
    const p = step.pause;
    const d = typeof p === "string" ? p : p && p.duration;
    return d ? `pause ${d}` : "pause until promote";
  }
  if (step.analysis !== undefined) return `analysis ${(step.analysis && step.analysis.duration) || ""}`.trim();
  return Object.keys(step)[0] || "step";
}

function drawRollout(svc) {
  const out = [];
  const doc = svc.rollout;
  if (!doc) {
    return [h("div", { class: "box" }, h("h3", { text: "Rollout" }), h("span", { class: "muted", text: "none yet" }))];
  }
  const r = doc.rollout;
  const head = h("div", { class: "box rollout", "data-rollout": r.id, "data-phase": r.phase },
    h("h3", { text: `Rollout ${r.id}` }),
    h("dl", { class: "kv" },
      h("dt", { text: "phase" }), h("dd", {}, h("span", { class: `phase ${r.phase}`, text: r.phase.replace("_", " ") })),
      h("dt", { text: "strategy" }), h("dd", { text: `${r.kind} · ${r.strategy.replace("_", "-")}` }),
      r.strategy === "canary" ? [h("dt", { text: "canary" }),
        h("dd", { class: "canary-weight", text: `${r.target_slot} at ${weight(r.weight)}` })] : null,
      doc.started_by ? [h("dt", { text: "started by" }), h("dd", { text: doc.started_by })] : null,
      r.paused_reason && !TERMINAL.has(r.phase) ? [h("dt", { text: "holding" }), h("dd", { text: r.paused_reason })] : null,
      r.reason ? [h("dt", { text: "why" }), h("dd", { text: r.reason })] : null));
  if (doc.steps.length) {
    head.append(h("div", { class: "steps" }, doc.steps.map((st, i) => h("span", {
      class: `step ${i < r.step_index || r.phase === "succeeded" ? "done" : ""} ${
        i === r.step_index && !TERMINAL.has(r.phase) ? "current" : ""}`, text: stepLabel(st) }))));
  }
  out.push(head);
  if (doc.analysis && doc.analysis.verdicts.length) {
    out.push(h("div", { class: "box analysis" }, h("h3", { text: `Analysis: ${doc.analysis.status}` }),
      h("table", { class: "verdicts" }, h("tbody", {}, doc.analysis.verdicts.map((v) => h("tr", {},
        h("td", {}, h("span", { class: `v ${v.status}`, text: v.status })),
        h("td", {}, h("div", { text: `${v.metric} · ${v.kind.replaceAll("_", " ")}` }),
          h("div", { class: `detail long ${opened.has(`${r.id}/${v.metric}/${v.kind}`) ? "open" : ""}`,
                     title: "click to show all", text: v.detail,
                     onclick: (e) => toggle(e.currentTarget, `${r.id}/${v.metric}/${v.kind}`) }),
          h("div", { class: "detail", text: `value ${fmtNum(v.value)} vs ${fmtNum(v.threshold)}, ${v.samples} samples` }))))))));
  }
  const items = [...doc.timeline].reverse().map((e) => h("li", {
    class: `${e.source} ${/failed|aborted|died|unhealthy|error/.test(e.kind) ? "bad" : ""}` },
  h("span", { class: "ts", text: clock(e.ts) }),
  h("span", {}, h("span", { class: "kind", text: e.kind }), e.message,
    e.actor ? h("span", { class: "actor", text: `by ${e.actor}` }) : null)));
  out.push(h("div", { class: "box" }, h("h3", { text: "Timeline" }), h("ul", { class: "timeline" }, items)));
  return out;
}

function toggle(el, key) {
  if (opened.has(key)) opened.delete(key); else opened.add(key);
  el.classList.toggle("open", opened.has(key));
}

function fmtNum(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "string") return v;
  return Math.abs(v) >= 100 || Number.isInteger(v) ? String(Math.round(v * 100) / 100) : v.toPrecision(3);
}

function drawService(svc) {
  const el = card(svc.service);
  el.querySelector(".listen").textContent = `listens on ${svc.listen}`;
  const r = svc.rollout && svc.rollout.rollout;
  const badge = el.querySelector(".card-head .phase");
  badge.hidden = !r;
  if (r) {
    badge.textContent = TERMINAL.has(r.phase) ? `last rollout ${r.phase}` : `${r.id} ${r.phase.replace("_", " ")}`;
    badge.className = `phase ${r.phase}`;
  }
  el.querySelector(".col.left").replaceChildren(drawTracks(svc), drawSplit(svc), drawDrift(svc), drawDatabase(svc));
  el.querySelector(".col.right").replaceChildren(...drawRollout(svc));
  for (const b of el.querySelectorAll("button[data-action]")) updateButton(b);
  drawCharts(svc.service);
  return el;
}

// -- charts -----------------------------------------------------------------------------------

const CHARTS = [
  { key: "rps", title: "Requests / s", value: (p) => p.requests, fmt: (v) => (v === null ? "–" : v.toFixed(0)) },
  { key: "errors", title: "Error rate", value: (p) => p.error_rate, fmt: (v) => pct(v, 2), unit: "ratio" },
  { key: "p50", title: "p50 latency", value: (p) => p.p50_ms, fmt: ms },
  { key: "p99", title: "p99 latency", value: (p) => p.p99_ms, fmt: ms },
];
const W = 320;
const H = 150;
const PAD = { l: 40, r: 6, t: 6, b: 16 };

function niceMax(v, ratio) {
  if (!(v > 0)) return ratio ? 0.01 : 1;
  const exp = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * exp >= v) return m * exp;
  return 10 * exp;
}

function smooth(points, value) {
  // a per-second series is noisy at low rates: show a 5-second trailing mean
  const out = [];
  const win = [];
  for (const p of points) {
    const v = value(p);
    win.push(v);
    if (win.length > 5) win.shift();
    const vals = win.filter((x) => x !== null && x !== undefined);
    out.push([p.t, v === null || v === undefined ? null : vals.reduce((a, b) => a + b, 0) / vals.length]);
  }
  return out;
}

function drawCharts(name) {
  const el = cards.get(name);
  const data = series.get(name);
  if (!el || !data) return;
  const svc = lastState && lastState.services.find((x) => x.service === name);
  const roles = Object.fromEntries((svc ? svc.tracks : []).map((t) => [t.slot, t.role]));
  const end = data.upto;
  const start = end - WINDOW_S;
  const box = el.querySelector(".charts");
  const charts = CHARTS.map((c) => {
    const lines = [];
    let max = 0;
    const latest = [];
    for (const [slot, pts] of data.tracks) {
      const sorted = [...pts.values()].sort((a, b) => a.t - b.t);
      if (!sorted.some((p) => p.requests > 0)) continue;
      const xy = smooth(sorted, c.value);
      for (const [, v] of xy) if (v !== null && v > max) max = v;
      lines.push([slot, xy]);
      const last = [...sorted].reverse().find((p) => c.value(p) !== null && c.value(p) !== undefined);
      latest.push(h("span", { class: slot, text: `${slot} ${last ? c.fmt(c.value(last)) : "–"}` }));
    }
    const top = niceMax(max, c.unit === "ratio");
    const x = (t) => PAD.l + ((t - start) / WINDOW_S) * (W - PAD.l - PAD.r);
    const y = (v) => PAD.t + (1 - v / top) * (H - PAD.t - PAD.b);
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": c.title, "data-chart": c.key });
    for (const f of [0, 0.5, 1]) {
      svg.append(s("line", { class: "grid", x1: PAD.l, x2: W - PAD.r, y1: y(top * f), y2: y(top * f) }));
      svg.append(s("text", { class: "axis", x: PAD.l - 4, y: y(top * f) + 3, "text-anchor": "end",
                             text: c.fmt(top * f) }));
    }
    for (const [m, anchor] of [[15, "start"], [10, "middle"], [5, "middle"], [0, "end"]]) {
      svg.append(s("text", { class: "axis", x: x(end - m * 60), y: H - 4, "text-anchor": anchor,
                             text: m ? `-${m} min` : "now" }));
    }
    for (const [slot, xy] of lines) {
      let d = "";
      let pen = false;
      for (const [t, v] of xy) {
        if (v === null || t < start) { pen = false; continue; }
        d += `${pen ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
      }
      svg.append(s("path", { class: `line ${slot} ${roles[slot] || ""}`, d, "data-track": slot }));
    }
    return h("div", { class: "chart", "data-chart": c.key },
      h("div", { class: "chart-head" }, h("span", { text: c.title }), h("span", { class: "now" }, latest)), svg);
  });
  box.replaceChildren(...charts);
}

// -- polling ----------------------------------------------------------------------------------

function showConnection() {
  const el = document.getElementById("conn");
  const stale = Date.now() - lastOk > 5000;
  el.className = `conn ${stale ? "bad" : "ok"}`;
  el.textContent = !lastOk ? "connecting…" : stale
    ? `daemon unreachable — last update ${Math.round((Date.now() - lastOk) / 1000)} s ago`
    : `live · updated ${new Date(lastOk).toTimeString().slice(0, 8)}`;
}

async function pollState() {
  try {
    const resp = await fetch("/v1/dashboard/services", { cache: "no-store" });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    lastState = await resp.json();
    lastOk = Date.now();
    drawHosts(lastState.hosts);
    const main = document.getElementById("services");
    const names = new Set(lastState.services.map((x) => x.service));
    for (const name of [...cards.keys()]) if (!names.has(name)) { cards.get(name).remove(); cards.delete(name); }
    if (!lastState.services.length) {
      main.replaceChildren(h("p", { class: "empty", text: "No services yet: shipyard deploy -f shipyard.yaml" }));
    } else {
      const els = lastState.services.map(drawService);
      if (els.some((e, i) => main.children[i] !== e) || main.children.length !== els.length) main.replaceChildren(...els);
    }
  } catch (e) {
    // shown by the connection badge; keep the last picture on screen
  }
  showConnection();
}

async function pollSeries() {
  const names = lastState ? lastState.services.map((x) => x.service) : [];
  for (const name of names) {
    let data = series.get(name);
    if (!data) { data = { upto: 0, tracks: new Map() }; series.set(name, data); }
    try {
      const q = new URLSearchParams({ service: name, since: String(data.upto) });
      const resp = await fetch(`/v1/dashboard/series?${q}`, { cache: "no-store" });
      if (!resp.ok) continue;
      const doc = await resp.json();
      for (const [slot, pts] of Object.entries(doc.tracks)) {
        if (!data.tracks.has(slot)) data.tracks.set(slot, new Map());
        const m = data.tracks.get(slot);
        for (const p of pts) m.set(p.t, p);
      }
      data.upto = Math.max(data.upto, doc.upto);
      for (const m of data.tracks.values()) for (const t of m.keys()) if (t <= data.upto - WINDOW_S) m.delete(t);
      drawCharts(name);
    } catch (e) {
      // the next poll tries again
    }
  }
}

function every(ms, fn) {
  const loop = async () => { await fn(); setTimeout(loop, ms); };
  loop();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token-form").addEventListener("submit", unlock);
  document.getElementById("lock").addEventListener("click", lock);
  showAuth();
  every(STATE_EVERY_MS, pollState);
  every(SERIES_EVERY_MS, pollSeries);
  setInterval(showConnection, 1000);
});
