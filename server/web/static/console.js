/* The editor console: sign-in, the live review queue, manual alerts, the audit log.
   Plain DOM (textContent only: nothing from the server is parsed as HTML). */
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const LABELS = {
    burglary: "Burglary", vehicle_break_in: "Vehicle break-in", vehicle_theft: "Vehicle theft",
    robbery: "Robbery", shots_fired: "Shots fired", shooting: "Shooting", stabbing: "Stabbing",
    hostage: "Hostage situation", arson: "Arson", residential_fire: "House fire",
    commercial_fire: "Commercial fire", structure_fire: "Structure fire", explosion: "Explosion",
    cardiac_arrest: "CPR needed",
  };
  const label = (c) => LABELS[c] || c.replace(/_/g, " ");
  let session = null;
  let events = null;
  const shown = new Map();      // incident id -> {element, map, item}
  let firstLoad = true;
  let unseen = 0;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  async function api(method, path, body) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && session) headers["X-CSRF-Token"] = session.csrf_token;
    const response = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401 && path !== "/v1/session") { signedOut(); }
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const err = new Error((data && (data.detail || data.title)) || response.statusText);
      err.status = response.status;
      throw err;
    }
    return data;
  }

  function announce(text) { $("announcer").textContent = text; }

  function show(section) {
    for (const id of ["signin", "queue", "alert", "responders", "audit"]) $(id).hidden = id !== section;
    for (const button of document.querySelectorAll("#nav [data-section]")) {
      if (button.dataset.section === section) button.setAttribute("aria-current", "page");
      else button.removeAttribute("aria-current");
    }
    if (section === "alert") openAlertForm();
    if (section === "audit") loadAudit();
    if (section === "responders") loadResponders();
    if (section === "queue") { unseen = 0; updateTitle(); }
  }

  /* ---- sign-in ---- */
  function signedOut() {
    session = null;
    if (events) { events.close(); events = null; }
    for (const entry of shown.values()) entry.map.remove();
    shown.clear();
    $("items").replaceChildren();
    $("nav").hidden = true;
    $("who").textContent = "";
    document.title = "geopush console";
    show("signin");
    $("username").focus();
  }

  function signedIn(info) {
    session = info;
    $("who").textContent = `${info.username} · ${info.agency_id} · ${info.role === "agency_admin" ? "agency admin" : "editor"}`;
    $("nav").hidden = false;
    const admin = info.role === "agency_admin";
    $("tab-alert").hidden = !admin;
    $("tab-responders").hidden = !admin;
    $("tab-audit").hidden = !admin;
    firstLoad = true;
    show("queue");
    listen();
  }

  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("signin-error").textContent = "";
    try {
      signedIn(await api("POST", "/v1/session",
        { username: $("username").value, password: $("password").value }));
      $("password").value = "";
    } catch (err) {
      $("signin-error").textContent = err.status === 401 ? "Wrong username or password." : err.message;
    }
  });

  $("sign-out").addEventListener("click", async () => {
    try { await api("DELETE", "/v1/session"); } finally { signedOut(); }
  });

  for (const button of document.querySelectorAll("#nav [data-section]")) {
    button.addEventListener("click", () => show(button.dataset.section));
  }

  /* ---- the live queue ---- */
  function listen() {
    if (events) events.close();
    events = new EventSource("/v1/admin/review/events");
    events.addEventListener("ready", refresh);
    events.addEventListener("change", refresh);
    events.onerror = () => { $("queue-status").textContent = "Reconnecting…"; };
  }

  function timeLeft(expiresAt) {
    const seconds = Math.max(0, Math.round((Date.parse(expiresAt) - Date.now()) / 1000));
    const m = Math.floor(seconds / 60), s = seconds % 60;
    return { seconds, text: `${m} min ${String(s).padStart(2, "0")} s` };
  }

  function updateTitle() {
    const count = shown.size;
    const badge = unseen > 0 ? `(${unseen} new) ` : (count ? `(${count}) ` : "");
    document.title = `${badge}Review queue · geopush console`;
  }

  function chime() {
    try {
      const ctx = new (window.AudioContext || window.webkitAudioContext)();
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0.15, ctx.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.001, ctx.currentTime + 0.4);
      osc.connect(gain).connect(ctx.destination);
      osc.start();
      osc.stop(ctx.currentTime + 0.4);
    } catch (err) { /* no audio device: the title badge still tells */ }
  }

  function renderItem(item) {
    const id = item.incident_id;
    const headingId = `item-${id}-heading`;
    const where = item.location.public || "location withheld";
    const left = el("dd", { class: "time-left" });
    const titleInput = el("input", { id: `title-${id}`, maxlength: "120" });
    titleInput.value = item.proposed.title;
    const bodyInput = el("textarea", { id: `body-${id}`, maxlength: "240" });
    bodyInput.value = item.proposed.body;
    const mapDiv = el("div", { class: "map", role: "img",
      "aria-label": `Map: exact location of the ${label(item.category)}` });
    const approve = el("button", { type: "button", class: "approve", text: "Approve" });
    const reject = el("button", { type: "button", class: "reject", text: "Reject" });
    const status = el("p", { role: "status" });
    const element = el("li", { class: "item", "data-incident": id },
      el("article", { "aria-labelledby": headingId },
        el("h3", { id: headingId, text: `${label(item.category)} · ${where}` }),
        el("dl", {},
          el("dt", { text: "Category" }), el("dd", { text: label(item.category) }),
          el("dt", { text: "Call type" }), el("dd", { text: item.call_type }),
          el("dt", { text: "Public location" }), el("dd", { text: where }),
          el("dt", { text: "Time left" }), left,
          el("dt", { text: "Narrative (redacted)" }),
          el("dd", { class: "narrative", text: item.narrative || "—" })),
        el("label", { for: titleInput.id, text: "Title" }), titleInput,
        el("label", { for: bodyInput.id, text: "Body" }), bodyInput,
        el("div", { class: "actions" }, approve, reject),
        status),
      mapDiv);
    const tick = () => {
      const t = timeLeft(item.expires_at);
      left.textContent = t.text;
      left.classList.toggle("urgent", t.seconds < 300);
    };
    tick();
    async function decide(action) {
      approve.disabled = reject.disabled = true;
      const body = {};
      if (titleInput.value.trim() !== item.proposed.title) body.title = titleInput.value.trim();
      if (bodyInput.value.trim() !== item.proposed.body) body.body = bodyInput.value.trim();
      try {
        await api("POST", `/v1/admin/review/${id}/${action}`,
          action === "approve" ? body : undefined);
        announce(`${action === "approve" ? "Approved" : "Rejected"}: ${label(item.category)}, ${where}`);
        $("last-decision").textContent = `${action === "approve" ? "Approved and sent" : "Rejected"}: ${label(item.category)} · ${where}`;
        drop(id);
      } catch (err) {
        status.textContent = err.message;
        approve.disabled = reject.disabled = false;
      }
    }
    approve.addEventListener("click", () => decide("approve"));
    reject.addEventListener("click", () => decide("reject"));
    return { element, mapDiv, tick };
  }

  function drop(id) {
    const entry = shown.get(id);
    if (!entry) return;
    entry.map.remove();
    entry.element.remove();
    shown.delete(id);
    updateCount();
  }

  function updateCount() {
    const n = shown.size;
    $("queue-status").textContent = n ? `${n} waiting` : "Nothing waiting for review.";
    updateTitle();
  }

  async function refresh() {
    if (!session) return;
    let data;
    try { data = await api("GET", "/v1/admin/review"); } catch (err) { return; }
    const ids = new Set(data.items.map((i) => i.incident_id));
    for (const id of [...shown.keys()]) if (!ids.has(id)) drop(id);
    const arrived = [];
    for (const item of data.items) {
      if (shown.has(item.incident_id)) continue;
      const view = renderItem(item);
      $("items").append(view.element);
      if (!firstLoad) view.element.classList.add("new");
      const exact = item.location.exact || item.location;
      // No animations: an item's map may be removed (decided elsewhere) at any moment,
      // and Leaflet fails on a map removed mid-animation.
      const map = geopushMaps.create(view.mapDiv,
        { zoomAnimation: false, fadeAnimation: false, markerZoomAnimation: false },
        [exact.lat, exact.lon, 16]);
      L.circleMarker([exact.lat, exact.lon], { radius: 8, color: "#b42318", fillOpacity: 0.8 })
        .bindTooltip("Exact location (editors only)").addTo(map);
      shown.set(item.incident_id, { element: view.element, map, item, tick: view.tick });
      arrived.push(item);
    }
    if (arrived.length && !firstLoad) {
      unseen += arrived.length;
      chime();
      announce(`New item for review: ${arrived.map((i) => label(i.category)).join(", ")}`);
    }
    firstLoad = false;
    updateCount();
  }

  setInterval(() => { for (const entry of shown.values()) entry.tick(); }, 1000);
  window.addEventListener("focus", () => { unseen = 0; updateTitle(); });

  /* ---- manual alerts ---- */
  let alertMap = null, vertices = [], outline = null;

  function openAlertForm() {
    if (alertMap) { alertMap.invalidateSize(); return; }
    alertMap = geopushMaps.create($("alert-map"));
    alertMap.on("click", (event) => {
      vertices.push([event.latlng.lat, event.latlng.lng]);
      drawOutline(false);
    });
  }

  function drawOutline(closed) {
    if (outline) outline.remove();
    outline = null;
    if (!vertices.length) return;
    outline = (closed ? L.polygon(vertices, { color: "#b42318" })
                      : L.polyline(vertices, { color: "#b42318", dashArray: "4" })).addTo(alertMap);
  }

  $("finish-area").addEventListener("click", () => {
    if (vertices.length < 3) { $("alert-status").textContent = "Add at least three corners."; return; }
    drawOutline(true);
    const ring = vertices.map(([lat, lon]) => [Number(lon.toFixed(6)), Number(lat.toFixed(6))]);
    ring.push(ring[0]);
    $("alert-area").value = JSON.stringify({ type: "Polygon", coordinates: [ring] });
    $("alert-status").textContent = "";
  });

  $("clear-area").addEventListener("click", () => {
    vertices = [];
    drawOutline(false);
    $("alert-area").value = "";
    $("audience").textContent = "";
  });

  $("alert-area").addEventListener("change", () => {
    try {
      const area = JSON.parse($("alert-area").value);
      vertices = area.coordinates[0].slice(0, -1).map(([lon, lat]) => [lat, lon]);
      drawOutline(true);
      alertMap.fitBounds(outline.getBounds());
    } catch (err) { /* the server names what is wrong on preview or send */ }
  });

  function area() {
    try { return JSON.parse($("alert-area").value); } catch (err) { return null; }
  }

  $("preview-audience").addEventListener("click", async () => {
    $("alert-status").textContent = "";
    try {
      const result = await api("POST", `/v1/admin/agencies/${session.agency_id}/alerts/preview`,
        { area: area() });
      $("audience").textContent = `${result.devices} device${result.devices === 1 ? "" : "s"} would receive this alert.`;
    } catch (err) { $("alert-status").textContent = err.message; }
  });

  $("alert-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("alert-status").textContent = "";
    try {
      const sent = await api("POST", `/v1/admin/agencies/${session.agency_id}/alerts`, {
        title: $("alert-title").value, body: $("alert-body").value, area: area(),
        severity: $("alert-severity").value,
        expires_in_minutes: Number($("alert-expiry").value),
      });
      $("alert-status").textContent = `Alert sent to ${sent.audience} device${sent.audience === 1 ? "" : "s"}.`;
    } catch (err) { $("alert-status").textContent = err.message; }
  });

  /* ---- audit log ---- */
  async function loadAudit() {
    const body = $("audit-table").tBodies[0];
    try {
      const data = await api("GET", "/v1/admin/audit?limit=200");
      body.replaceChildren(...data.entries.map((e) => el("tr", {},
        el("td", { text: new Date(e.at).toLocaleString() }), el("td", { text: e.actor }),
        el("td", { text: e.action }), el("td", { text: e.target || "" }),
        el("td", { class: "details", text: JSON.stringify(e.details) }))));
    } catch (err) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: "5", text: err.message })));
    }
  }

  /* ---- responders' answers (agency admins) ---- */
  async function loadResponders() {
    const body = $("responders-table").tBodies[0];
    try {
      const data = await api("GET", `/v1/admin/agencies/${session.agency_id}/responder-answers`);
      $("responders-status").textContent = data.incidents.length
        ? `${data.incidents.length} CPR call${data.incidents.length === 1 ? "" : "s"} in the last ${data.hours} hours.`
        : `No CPR calls in the last ${data.hours} hours.`;
      body.replaceChildren(...data.incidents.map((i) => el("tr", {},
        el("td", { text: new Date(i.received_at).toLocaleString() }),
        el("td", { text: label(i.category) }), el("td", { text: i.public_location || "" }),
        el("td", { text: String(i.alerted) }), el("td", { text: String(i.responding) }),
        el("td", { text: String(i.on_scene) }), el("td", { text: String(i.declined) }))));
    } catch (err) { $("responders-status").textContent = err.message; }
  }
  // Answers come in by the minute while a call runs: refresh what is on screen.
  setInterval(() => { if (session && !$("responders").hidden) loadResponders(); }, 15000);

  /* ---- start ---- */
  api("GET", "/v1/session").then(signedIn, signedOut);
})();
