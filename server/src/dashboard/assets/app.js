// The fleet dashboard: a page of the admin API, read through the session
// cookie. Text from devices, operators and metadata is untrusted: it only
// ever reaches the page as textContent (el() below), never as markup.
"use strict";

const STATUSES = ["idle", "downloading", "installed", "rebooting", "committed", "rolled_back", "failed"];
const WAVE_PARTS = ["pending", "downloading", "installed", "committed", "rolled_back", "failed", "not_seen"];
const POLL_MS = 2000;

let session = null;   // {name, role, can_act, csrf_token}
let pollTimer = null;
// Bumped by every route(): a render that awaited the network while a newer
// one started (log-in sets the hash, which routes again) must not install
// its poll, or it would keep refreshing a page that is no longer shown.
let routeGen = 0;
let fleetEtag = null;
let lastRollouts = null;
let fleetFilters = { status: "", hardware_id: "", q: "" };

// el("td", {class: "mono"}, "text", child, ...): strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function $(id) { return document.getElementById(id); }

function showMessage(text, ok) {
  const m = $("message");
  m.textContent = text;
  m.className = ok ? "ok" : "";
  m.hidden = !text;
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// One admin API call; state-changing ones carry the CSRF token.
async function api(method, path, body, extraHeaders) {
  const headers = Object.assign({ "Accept": "application/json" }, extraHeaders || {});
  if (method !== "GET" && session) headers["X-CSRF-Token"] = session.csrf_token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin", cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 304) return { notModified: true, resp };
  if (!resp.ok) {
    let text = resp.status + " " + resp.statusText;
    try { text = (await resp.json()).error || text; } catch (_) { /* not JSON */ }
    if (resp.status === 401 && path !== "/dashboard/session") {
      session = null;
      route();
    }
    throw new HttpError(resp.status, text);
  }
  if (resp.status === 204) return { resp };
  return { data: await resp.json(), resp };
}

function badge(text, cls) { return el("span", { class: "badge " + (cls || text) }, text.replace("_", " ")); }

function when(iso) {
  if (!iso) return "";
  const t = new Date(iso);
  return isNaN(t) ? iso : t.toISOString().replace("T", " ").replace(/\.\d+Z$|Z$/, " UTC");
}

function size(n) {
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
  return n + " B";
}

function page(...nodes) {
  const p = $("page");
  p.replaceChildren(...nodes.flat().filter(n => n !== null && n !== undefined));
}

function stopPolling() {
  if (pollTimer) clearInterval(pollTimer);
  pollTimer = null;
}

function poll(fn, gen) {
  if (gen !== routeGen) return;
  stopPolling();
  pollTimer = setInterval(() => fn().catch(e => showMessage(e.message)), POLL_MS);
}

// ---- Fleet overview ----

function fleetQuery() {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(fleetFilters)) if (v) q.set(k, v);
  const s = q.toString();
  return "/admin/v1/fleet" + (s ? "?" + s : "");
}

async function renderFleet() {
  const gen = routeGen;
  const cards = el("div", { class: "cards", id: "fleet-counts" });
  const versions = el("div", { class: "cards", id: "version-counts" });
  const hwSelect = el("select", { id: "filter-hardware", onchange: e => { fleetFilters.hardware_id = e.target.value; refresh(true); } },
    el("option", { value: "" }, "all hardware"));
  const statusSelect = el("select", { id: "filter-status", onchange: e => { fleetFilters.status = e.target.value; refresh(true); } },
    el("option", { value: "" }, "any status"), STATUSES.map(s => el("option", { value: s, selected: fleetFilters.status === s }, s.replace("_", " "))));
  const search = el("input", { id: "filter-search", type: "search", placeholder: "search id, version, reason", value: fleetFilters.q,
    oninput: e => { fleetFilters.q = e.target.value.slice(0, 128); refresh(true); } });
  const body = el("tbody", { id: "fleet-rows" });
  const shown = el("span", { class: "muted", id: "fleet-shown" });
  page(
    el("h1", {}, "Fleet"),
    el("h2", {}, "Last status reported"),
    cards,
    el("h2", {}, "Installed versions"),
    versions,
    el("div", { class: "filters" }, statusSelect, hwSelect, search, shown),
    el("table", { id: "fleet-table" },
      el("thead", {}, el("tr", {}, ["Device", "Hardware", "Installed", "Slot", "Last status", "Target", "Reason", "Last seen"].map(h => el("th", {}, h)))),
      body),
  );
  fleetEtag = null;
  async function refresh(filtersChanged) {
    if (filtersChanged) fleetEtag = null;
    const headers = fleetEtag ? { "If-None-Match": fleetEtag } : {};
    const { data, notModified, resp } = await api("GET", fleetQuery(), undefined, headers);
    if (notModified) return;
    fleetEtag = resp.headers.get("ETag");
    cards.replaceChildren(
      el("div", { class: "card" }, el("div", { class: "n", id: "count-total" }, data.total), el("div", { class: "label" }, "devices")),
      ...STATUSES.map(s => el("div", { class: "card" },
        el("div", { class: "n", id: "count-" + s }, data.by_status[s] || 0), el("div", { class: "label" }, s.replace("_", " ")))),
    );
    const byVersion = Object.entries(data.by_version);
    versions.replaceChildren(...(byVersion.length ? byVersion.map(([v, n]) => el("div", { class: "card", "data-version": v },
      el("div", { class: "n" }, n), el("div", { class: "label mono" }, v))) : [el("span", { class: "muted" }, "no device has reported yet")]));
    const current = hwSelect.value;
    hwSelect.replaceChildren(el("option", { value: "" }, "all hardware"),
      ...Object.entries(data.by_hardware_id).map(([hw, n]) => el("option", { value: hw, selected: hw === current }, hw + " (" + n + ")")));
    shown.textContent = data.matched + " of " + data.total + " shown" + (data.devices.length < data.matched ? " (first " + data.devices.length + ")" : "");
    body.replaceChildren(...data.devices.map(d => el("tr", { "data-device": d.device_id },
      el("td", {}, el("a", { href: "#/device/" + encodeURIComponent(d.device_id) }, d.device_id)),
      el("td", {}, d.hardware_id),
      el("td", { class: "mono" }, d.installed_version),
      el("td", {}, d.booted_slot || ""),
      el("td", {}, badge(d.status)),
      el("td", { class: "mono" }, d.target || ""),
      el("td", {}, d.reason || ""),
      el("td", {}, when(d.last_seen)),
    )));
  }
  await refresh(true);
  poll(() => refresh(false), gen);
}

// ---- One device ----

async function renderDevice(id) {
  const path = "/admin/v1/devices/" + encodeURIComponent(id);
  const [{ data: d }, { data: events }] = await Promise.all([api("GET", path), api("GET", path + "/events")]);
  page(
    el("h1", {}, "Device ", el("span", { class: "mono", id: "device-id" }, d.device_id)),
    el("dl", { class: "facts" },
      el("dt", {}, "Hardware id"), el("dd", {}, d.hardware_id),
      el("dt", {}, "Installed version"), el("dd", { class: "mono", id: "device-version" }, d.installed_version),
      el("dt", {}, "Booted slot"), el("dd", { id: "device-slot" }, d.booted_slot || "unknown"),
      el("dt", {}, "Last status"), el("dd", {}, badge(d.status)),
      el("dt", {}, "Last seen"), el("dd", {}, when(d.last_seen)),
    ),
    el("h2", {}, "History of reports"),
    el("table", { id: "device-events" },
      el("thead", {}, el("tr", {}, ["At", "Status", "Target", "Target version", "Running", "Slot", "Reason"].map(h => el("th", {}, h)))),
      el("tbody", {}, events.slice().reverse().map(e => el("tr", {},
        el("td", {}, when(e.at)),
        el("td", {}, badge(e.status)),
        el("td", { class: "mono" }, e.target || ""),
        el("td", { class: "mono" }, e.target_version || ""),
        el("td", { class: "mono" }, e.installed_version),
        el("td", {}, e.booted_slot || ""),
        el("td", {}, e.reason || ""),
      )))),
  );
}

// ---- Releases ----

async function renderReleases() {
  const { data } = await api("GET", "/admin/v1/releases");
  const soon = data.roles.filter(r => r.expires_soon);
  page(
    el("h1", {}, "Releases"),
    soon.length ? el("p", { class: "hold", id: "expiry-warning" }, "Signed metadata expiring soon: " + soon.map(r => r.role).join(", ") +
      ". Devices refuse expired metadata; re-sign with ota-repo.") : null,
    el("h2", {}, "Signed roles"),
    el("table", { id: "roles" },
      el("thead", {}, el("tr", {}, ["Role", "Version", "Expires", ""].map(h => el("th", {}, h)))),
      el("tbody", {}, data.roles.map(r => el("tr", {},
        el("td", {}, r.role), el("td", {}, r.version), el("td", {}, when(r.expires)),
        el("td", {}, r.expired ? badge("expired", "bad") : r.expires_soon ? badge("expires soon", "warn") : el("span", { class: "muted" }, "ok")))))),
    el("h2", {}, "Targets"),
    el("table", { id: "releases" },
      el("thead", {}, el("tr", {}, ["Target", "Version", "Hardware ids", "Size", "Hashes", "Rollout"].map(h => el("th", {}, h)))),
      el("tbody", {}, data.releases.map(r => el("tr", {},
        el("td", { class: "mono" }, r.target),
        el("td", { class: "mono" }, r.version),
        el("td", {}, r.hardware_ids.join(", ")),
        el("td", {}, size(r.length)),
        el("td", { class: "mono" }, Object.entries(r.hashes).map(([alg, h]) => el("div", { title: h }, alg + ": " + h.slice(0, 16) + "…"))),
        el("td", {}, r.staged ? el("a", { href: "#/rollouts" }, "staged") : "all at once"),
      )))),
  );
}

// ---- Rollouts ----

function waveChart(w) {
  const total = Math.max(w.total, 1);
  return el("div", { class: "wave", "data-wave": w.name },
    el("div", {}, el("strong", {}, w.name), " ", el("span", { class: "muted" }, w.open ? "open" : w.not_before ? "opens " + when(w.not_before) : "")),
    el("div", { class: "bar", title: WAVE_PARTS.map(p => p.replace("_", " ") + ": " + w[p]).join(", ") },
      WAVE_PARTS.filter(p => w[p] > 0).map(p => {
        const seg = el("span", { class: "seg-" + p, "data-part": p, "data-count": w[p] });
        seg.style.width = (100 * w[p] / total) + "%";  // CSSOM: allowed under style-src 'self'
        return seg;
      })),
    el("div", { class: "muted" }, w.total + " device" + (w.total === 1 ? "" : "s")),
  );
}

function legend() {
  return el("div", { class: "legend" }, WAVE_PARTS.map(p => el("span", {}, el("i", { class: "seg-" + p }), p.replace("_", " "))));
}

function rolloutCard(s) {
  const reason = el("input", { type: "text", maxlength: 1024, placeholder: "reason (for pause and abort)", class: "reason" });
  async function act(action) {
    const body = action === "resume" ? {} : { reason: reason.value || undefined };
    try {
      await api("POST", "/admin/v1/rollouts/" + s.target.split("/").map(encodeURIComponent).join("/") + "/" + action, body);
      showMessage(action + " of " + s.target + " done", true);
      reason.value = "";
      lastRollouts = null;
      await renderRollouts();
    } catch (e) {
      showMessage(action + " refused: " + e.message);
    }
  }
  return el("section", { class: "rollout", "data-target": s.target },
    el("h2", {}, el("span", { class: "mono" }, s.target), " ", el("span", { class: "muted" }, s.version || ""), " ", badge(s.state)),
    s.state !== "active" ? el("div", { class: "hold" },
      el("strong", {}, s.state === "paused" ? "Paused" : "Aborted"),
      s.changed_by ? " by " + s.changed_by : "", s.changed_at ? " at " + when(s.changed_at) : "",
      s.reason ? el("div", { class: "hold-reason" }, s.reason) : null) : null,
    legend(),
    s.waves.map(waveChart),
    el("div", { class: "actions" },
      reason,
      el("button", { type: "button", class: "secondary", "data-action": "pause", onclick: () => act("pause") }, "Pause"),
      el("button", { type: "button", "data-action": "resume", onclick: () => act("resume") }, "Resume"),
      el("button", { type: "button", class: "danger", "data-action": "abort", onclick: () => act("abort") }, "Abort"),
      session && !session.can_act ? el("span", { class: "muted" }, "viewer: the server refuses changes") : null,
    ),
    s.problems.length ? [el("h3", {}, "Failures and roll-backs"), el("table", { class: "problems" },
      el("thead", {}, el("tr", {}, ["Device", "Wave", "Status", "Reason", "At"].map(h => el("th", {}, h)))),
      el("tbody", {}, s.problems.map(p => el("tr", {},
        el("td", {}, el("a", { href: "#/device/" + encodeURIComponent(p.device_id) }, p.device_id)),
        el("td", {}, p.wave || ""), el("td", {}, badge(p.status)), el("td", {}, p.reason || ""), el("td", {}, when(p.at))))))] : null,
    s.history.length ? [el("h3", {}, "History"), el("table", { class: "history" },
      el("thead", {}, el("tr", {}, ["At", "State", "By", "Reason"].map(h => el("th", {}, h)))),
      el("tbody", {}, s.history.slice().reverse().map(h => el("tr", {},
        el("td", {}, when(h.at)), el("td", {}, badge(h.state)), el("td", {}, h.by), el("td", {}, h.reason || "")))))] : null,
  );
}

async function renderRollouts() {
  const { data: list } = await api("GET", "/admin/v1/rollouts");
  const staged = list.filter(r => r.waves.length > 0 || r.state !== "active");
  const statuses = await Promise.all(staged.map(r =>
    api("GET", "/admin/v1/rollouts/" + r.target.split("/").map(encodeURIComponent).join("/")).then(x => x.data)));
  // Re-drawn only when something changed, keeping reasons being typed.
  const fingerprint = JSON.stringify(statuses);
  if (fingerprint === lastRollouts && $("rollouts")) return;
  lastRollouts = fingerprint;
  const typed = {};
  for (const card of document.querySelectorAll(".rollout")) typed[card.dataset.target] = card.querySelector(".reason").value;
  page(el("div", { id: "rollouts" },
    el("h1", {}, "Rollouts"),
    statuses.length ? statuses.map(rolloutCard) : el("p", { class: "muted" }, "No staged rollout is published."),
  ));
  for (const card of document.querySelectorAll(".rollout")) card.querySelector(".reason").value = typed[card.dataset.target] || "";
}

// ---- Log-in and navigation ----

async function login(event) {
  event.preventDefault();
  try {
    const { data } = await api("POST", "/dashboard/session", { token: $("token").value });
    session = data;
    $("token").value = "";
    showMessage("");
    if (!location.hash || location.hash === "#/login") location.hash = "#/fleet";
    route();
  } catch (e) {
    showMessage("Log-in refused: " + e.message);
  }
}

async function logout() {
  try { await api("DELETE", "/dashboard/session"); } catch (_) { /* already gone */ }
  session = null;
  showMessage("Logged out.", true);
  route();
}

async function route() {
  const gen = ++routeGen;
  stopPolling();
  const loggedIn = !!session;
  $("login").hidden = loggedIn;
  $("nav").hidden = !loggedIn;
  $("logout").hidden = !loggedIn;
  $("who").textContent = loggedIn ? session.name + " (" + session.role + ")" : "";
  if (!loggedIn) { page(); return; }
  const hash = location.hash || "#/fleet";
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("current", hash.startsWith(a.getAttribute("href")));
  try {
    if (hash.startsWith("#/device/")) await renderDevice(decodeURIComponent(hash.slice(9)));
    else if (hash === "#/releases") await renderReleases();
    else if (hash === "#/rollouts") { lastRollouts = null; await renderRollouts(); poll(renderRollouts, gen); }
    else await renderFleet();
  } catch (e) {
    showMessage(e.message);
  }
}

async function start() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", () => { showMessage(""); route(); });
  try { session = (await api("GET", "/dashboard/session")).data; } catch (_) { session = null; }
  route();
}

document.addEventListener("DOMContentLoaded", start);
