// ztun's web view: polls the API once a second (same origin), draws the flows, the throughput per
// outbound, drops and health. The secret (if the API has one) comes from #token=... or the form
// and stays in this browser's localStorage.
"use strict";
const HISTORY = 300;  // seconds of throughput kept for the graph
const COLORS = ["#1e88e5", "#e53935", "#43a047", "#fb8c00", "#8e24aa", "#00897b", "#6d4c41", "#3949ab"];
const $ = (sel) => document.querySelector(sel);
let token = localStorage.getItem("ztun-secret") || "";
const hashToken = new URLSearchParams(location.hash.slice(1)).get("token");
if (hashToken) { token = hashToken; localStorage.setItem("ztun-secret", token); history.replaceState(null, "", location.pathname); }
let sortKey = "start", sortDir = -1, flows = [], last = null;
const series = {};  // outbound -> [bytes/s, ...] oldest first
const colors = {};

function api(path, options = {}) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  return fetch(path, { ...options, headers, cache: "no-store" }).then((r) => {
    if (r.status === 401) { $("#login").hidden = false; throw new Error("the API needs its secret"); }
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return r.status === 204 ? null : r.json();
  });
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function flowValue(f, key) {
  const m = f.metadata;
  switch (key) {
    case "network": return m.network;
    case "source": return m.sourceIP + ":" + m.sourcePort;
    case "destination": return m.destinationIP + ":" + m.destinationPort;
    case "host": return m.host;
    case "chain": return f.chains.join(" > ");
    case "rule": return f.rule + (f.rulePayload ? " " + f.rulePayload : "");
    case "start": return Date.parse(f.start);
    default: return f[key];
  }
}

function drawFlows() {
  const words = $("#filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  const keys = ["network", "source", "destination", "host", "chain", "rule"];
  const shown = flows.filter((f) => {
    const text = keys.map((k) => flowValue(f, k)).join(" ").toLowerCase();
    return words.every((w) => text.includes(w));
  });
  shown.sort((a, b) => {
    const x = flowValue(a, sortKey), y = flowValue(b, sortKey);
    return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
  });
  const body = document.createElement("tbody");
  const now = Date.now();
  for (const f of shown) {
    const row = body.insertRow();
    row.dataset.id = f.id;
    for (const k of keys) cell(row, flowValue(f, k));
    cell(row, bytes(f.upload), "n up");
    cell(row, bytes(f.download), "n down").dataset.bytes = f.download;
    cell(row, Math.max(0, Math.round((now - Date.parse(f.start)) / 1000)) + " s", "n");
    const button = document.createElement("button");
    button.textContent = "close";
    button.className = "close";
    button.onclick = () => api("/connections/" + encodeURIComponent(f.id), { method: "DELETE" }).then(refresh, showError);
    row.insertCell().appendChild(button);
  }
  $("#flows tbody").replaceWith(body);
  $("#flow-count").textContent = shown.length === flows.length ? `(${flows.length})` : `(${shown.length} of ${flows.length})`;
  document.querySelectorAll("#flows th[data-key]").forEach((th) => {
    th.className = th.dataset.key === sortKey ? (sortDir > 0 ? "asc" : "desc") : "";
  });
}

function drawSide(summary) {
  const ob = document.createElement("tbody");
  for (const [name, o] of Object.entries(summary.outbounds)) {
    const row = ob.insertRow();
    cell(row, name);
    cell(row, o.type);
    cell(row, o.health, o.health).title = o.error || "";
    cell(row, bytes(o.up), "n");
    cell(row, bytes(o.down), "n");
  }
  $("#outbounds tbody").replaceWith(ob);
  const drops = document.createElement("tbody");
  const entries = Object.entries(summary.drops).filter((e) => e[1] > 0).sort((a, b) => b[1] - a[1]);
  if (!entries.length) cell(drops.insertRow(), "none");
  for (const [reason, count] of entries) {
    const row = drops.insertRow();
    cell(row, reason);
    cell(row, count, "n");
  }
  $("#drops tbody").replaceWith(drops);
  $("#version").textContent = summary.version ? "v" + summary.version : "";
  $("#totals").textContent = `up ${bytes(summary.uploadTotal)}, down ${bytes(summary.downloadTotal)}`;
}

function record(summary) {
  const t = summary.taken;
  for (const [name, o] of Object.entries(summary.outbounds)) {
    if (!series[name]) { series[name] = []; colors[name] = COLORS[Object.keys(colors).length % COLORS.length]; }
    const before = last && last.outbounds[name];
    const dt = last ? t - last.taken : 0;
    if (dt > 0) series[name].push(Math.max(0, (o.up + o.down - (before ? before.up + before.down : 0)) / dt));
    else if (!last) series[name].push(0);
    if (series[name].length > HISTORY) series[name].shift();
  }
  if (!last || t > last.taken) last = summary;
}

function drawGraph() {
  const canvas = $("#graph"), ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 50;
  ctx.clearRect(0, 0, w, h);
  const peak = Math.max(1, ...Object.values(series).flat());
  ctx.strokeStyle = "#ccc"; ctx.fillStyle = "#666"; ctx.font = "11px sans-serif"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = h - 10 - (h - 20) * i / 4;
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(bytes(peak * i / 4) + "/s", 0, y + 4);
  }
  const legend = $("#legend");
  legend.textContent = "";
  for (const [name, points] of Object.entries(series)) {
    ctx.strokeStyle = colors[name]; ctx.lineWidth = 2; ctx.beginPath();
    points.forEach((v, i) => {
      const x = pad + (w - pad) * (HISTORY - points.length + i) / (HISTORY - 1);
      const y = h - 10 - (h - 20) * v / peak;
      if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.stroke();
    const item = document.createElement("span"), swatch = document.createElement("i");
    swatch.style.background = colors[name];  // a property, not an inline style attribute: the page's CSP allows it
    const recent = points.slice(-5);  // the legend's rate: the last 5 s (a relay moves in bursts)
    item.append(swatch, name + " " + bytes(recent.reduce((a, b) => a + b, 0) / Math.max(1, recent.length)) + "/s");
    legend.appendChild(item);
  }
}

function showError(e) { $("#error").textContent = e.message; }

function refresh() {
  return Promise.all([api("/ztun/summary"), api("/connections")]).then(([summary, conns]) => {
    $("#error").textContent = "";
    record(summary);
    drawSide(summary);
    drawGraph();
    flows = conns.connections || [];
    drawFlows();
  }, showError);
}

document.querySelectorAll("#flows th[data-key]").forEach((th) => th.addEventListener("click", () => {
  sortDir = sortKey === th.dataset.key ? -sortDir : 1;
  sortKey = th.dataset.key;
  drawFlows();
}));
$("#filter").addEventListener("input", drawFlows);
$("#close-all").addEventListener("click", () => api("/connections", { method: "DELETE" }).then(refresh, showError));
$("#login").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("#secret").value;
  localStorage.setItem("ztun-secret", token);
  $("#login").hidden = true;
  refresh();
});
refresh();
setInterval(refresh, 1000);
