// The live page of a streambed replica: polls /live/data, /live/projection and
// /recommendations, and draws them. No framework; charts by uPlot (npm, served locally).
"use strict";

const HISTORY = 300; // points kept per chart (5 minutes at one poll a second)
const live = { polls: 0, errors: 0, data: null, rates: null, points: 0, moved: 0, recs: [],
               recsUser: null, recsStrategy: null, recUpdates: 0 };
window.streambedLive = live; // what the browser tests read

const $ = (id) => document.getElementById(id);
const fmt = (x, digits = 0) => (x === null || x === undefined || !isFinite(x)) ? "–"
  : x.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
const secs = (s) => (s === null || s === undefined) ? "–"
  : s < 1 ? `${fmt(s * 1000, 0)} ms` : `${fmt(s, 2)} s`;
const sum = (o) => Object.values(o || {}).reduce((a, b) => a + b, 0);

function chart(el, series) {
  const opts = {
    width: el.clientWidth || 400, height: 180,
    scales: { x: { time: true } },
    axes: [{ stroke: "#8b95a5", grid: { stroke: "#2a313b" } },
           { stroke: "#8b95a5", grid: { stroke: "#2a313b" }, size: 60 }],
    series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 2 }))],
  };
  const data = [[], ...series.map(() => [])];
  return { plot: new uPlot(opts, data, el), data };
}

function push(c, t, values) {
  c.data[0].push(t);
  values.forEach((v, i) => c.data[i + 1].push(v));
  if (c.data[0].length > HISTORY) c.data.forEach((col) => col.shift());
  c.plot.setData(c.data);
}

let charts = null;
function setupCharts() {
  charts = {
    throughput: chart($("chart-throughput"), [["events/s", "#4fc3f7"], ["vectors/s", "#ffb74d"]]),
    freshness: chart($("chart-freshness"), [["p50", "#81c784"], ["p95", "#ffb74d"], ["p99", "#e57373"]]),
    lag: chart($("chart-lag"), [["worker group", "#ba68c8"], ["replica", "#4fc3f7"]]),
  };
}

async function getJSON(path) {
  const resp = await fetch(path, { cache: "no-store" });
  if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
  return resp.json();
}

async function pollData() {
  const d = await getJSON("/live/data");
  const prev = live.data;
  live.data = d;
  live.polls += 1;
  if (prev) {
    const dt = Math.max(1e-3, d.ts - prev.ts);
    const events = (sum(d.events_seen) - sum(prev.events_seen)) / dt;
    const vectors = (sum(d.vectors_applied) - sum(prev.vectors_applied)) / dt;
    const byType = Object.entries(d.events_seen)
      .map(([t, n]) => [t, (n - (prev.events_seen[t] || 0)) / dt]).filter(([, r]) => r > 0);
    live.rates = { events, vectors };
    $("events-rate").textContent = fmt(events, 1);
    $("events-types").textContent = byType.length
      ? byType.map(([t, r]) => `${t} ${fmt(r, 1)}`).join(" · ") : "no events in the last second";
    $("vectors-rate").textContent = fmt(vectors, 1);
    const item = d.vectors_applied.item - prev.vectors_applied.item;
    const user = d.vectors_applied.user - prev.vectors_applied.user;
    $("vectors-split").textContent = `items ${fmt(item / dt, 1)} · users ${fmt(user / dt, 1)}`;
    push(charts.throughput, d.ts, [events, vectors]);
  }
  const f = d.freshness_seconds;
  $("fresh-p50").textContent = secs(f.p50);
  $("fresh-p95").textContent = secs(f.p95);
  $("fresh-p99").textContent = secs(f.p99);
  $("fresh-samples").textContent = fmt(f.samples);
  push(charts.freshness, d.ts, [f.p50, f.p95, f.p99]);
  const workerLag = d.worker_lag === null ? null : sum(d.worker_lag);
  const replicaLag = sum(d.replica_lag);
  $("worker-lag").textContent = workerLag === null ? "–" : fmt(workerLag);
  $("worker-lag-parts").textContent = d.worker_lag === null ? "worker group not seen yet"
    : Object.entries(d.worker_lag).map(([p, n]) => `p${p}: ${fmt(n)}`).join(" · ");
  $("replica-lag").textContent = fmt(replicaLag);
  push(charts.lag, d.ts, [workerLag, replicaLag]);
  $("items").textContent = fmt(d.index.items);
  $("users").textContent = fmt(d.index.users);
  $("fresh-buffer").textContent = fmt(d.index.fresh);
  $("status").textContent = `updated ${new Date(d.ts * 1000).toLocaleTimeString()}`;
  if (!$("user").value && d.recent_users.length) $("user").value = d.recent_users[0];
}

const trails = new Map(); // item id -> previous [x, y]
async function pollProjection() {
  const p = await getJSON("/live/projection?n=400");
  const canvas = $("proj");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 16;
  ctx.clearRect(0, 0, w, h);
  const pts = p.points;
  live.points = pts.length;
  canvas.dataset.points = String(pts.length);
  $("proj-info").textContent = `${pts.length} items`;
  if (!pts.length) return;
  let lim = 1e-9;
  for (const [, x, y] of pts) lim = Math.max(lim, Math.abs(x), Math.abs(y));
  const sx = (x) => w / 2 + (x / lim) * (w / 2 - pad);
  const sy = (y) => h / 2 - (y / lim) * (h / 2 - pad);
  const maxUpdates = Math.max(...pts.map((q) => q[3]), 1);
  let moved = 0;
  ctx.lineWidth = 1;
  for (const [id, x, y, n] of pts) {
    const before = trails.get(id);
    if (before) {
      const d = Math.hypot(x - before[0], y - before[1]);
      moved += d;
      if (d > 0) {
        ctx.strokeStyle = "rgba(139,149,165,0.5)";
        ctx.beginPath(); ctx.moveTo(sx(before[0]), sy(before[1])); ctx.lineTo(sx(x), sy(y)); ctx.stroke();
      }
    }
    const heat = Math.log1p(n) / Math.log1p(maxUpdates);
    ctx.fillStyle = `hsl(${200 - 170 * heat}, 80%, ${45 + 15 * heat}%)`;
    ctx.beginPath(); ctx.arc(sx(x), sy(y), 2.5 + 2 * heat, 0, 2 * Math.PI); ctx.fill();
    trails.set(id, [x, y]);
  }
  live.moved += moved;
  canvas.dataset.moved = String(live.moved);
}

async function pollRecs() {
  const user = $("user").value.trim();
  if (!user) return;
  const r = await getJSON(`/recommendations/${encodeURIComponent(user)}?k=10&exclude_seen=true`);
  const before = new Set(live.recs.map((i) => i.item_id));
  const changed = JSON.stringify(r.items.map((i) => i.item_id)) !== JSON.stringify(live.recs.map((i) => i.item_id));
  if (changed) live.recUpdates += 1;
  live.recs = r.items;
  live.recsUser = user;
  live.recsStrategy = r.strategy;
  $("recs-info").textContent = `${r.strategy} · the list changed ${live.recUpdates} times`;
  const ol = $("recs");
  ol.replaceChildren(...r.items.map((i) => {
    const li = document.createElement("li");
    li.textContent = `${i.item_id} `;
    if (before.size && !before.has(i.item_id)) li.className = "new";
    const s = document.createElement("span");
    s.className = "score";
    s.textContent = i.score.toFixed(3);
    li.appendChild(s);
    return li;
  }));
}

function every(ms, fn) {
  const run = async () => {
    try { await fn(); } catch (err) {
      live.errors += 1;
      $("status").textContent = `error: ${err.message}`;
    }
    setTimeout(run, ms);
  };
  run();
}

const params = new URLSearchParams(location.search);
if (params.get("user")) $("user").value = params.get("user");
setupCharts();
every(1000, pollData);
every(2000, pollProjection);
every(2000, pollRecs);
