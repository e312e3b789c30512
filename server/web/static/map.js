/* The public map: the last hour's alerted incidents in view, from GET /v1/incidents. */
"use strict";
(function () {
  const map = geopushMaps.create(document.getElementById("map"));
  const markers = L.layerGroup().addTo(map);
  const list = document.getElementById("incident-list");
  const status = document.getElementById("map-status");
  const COLORS = { fire: "#c2410c", violence: "#b42318", property: "#0b5cad" };
  const kind = (c) => /fire|arson|explosion/.test(c) ? "fire"
    : /shoot|shots|stab|hostage|robbery/.test(c) ? "violence" : "property";
  let pending = null;

  function age(minutes) { return minutes < 1 ? "just now" : `${minutes} min ago`; }

  async function load() {
    const b = map.getBounds();
    const bbox = [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()]
      .map((v, i) => Math.max(i % 2 ? -90 : -180, Math.min(i % 2 ? 90 : 180, v)).toFixed(4))
      .join(",");
    const response = await fetch(`/v1/incidents?bbox=${bbox}`);
    if (!response.ok) {
      const problem = await response.json();
      status.textContent = problem.detail || problem.title;
      return;
    }
    const data = await response.json();
    markers.clearLayers();
    list.replaceChildren();
    for (const incident of data.incidents) {
      const where = incident.location || "Location withheld";
      const text = `${incident.label} · ${where} · ${age(incident.age_minutes)}`;
      L.circleMarker([incident.lat, incident.lon], {
        radius: 9, color: COLORS[kind(incident.category)], fillOpacity: 0.7,
      }).bindTooltip(text).addTo(markers);
      const item = document.createElement("li");
      const name = document.createElement("strong");
      name.textContent = incident.label;
      const place = document.createElement("div");
      place.textContent = where;
      const when = document.createElement("div");
      when.className = "age";
      when.textContent = age(incident.age_minutes);
      item.append(name, place, when);
      list.append(item);
    }
    status.textContent = data.incidents.length
      ? `${data.incidents.length} incident${data.incidents.length === 1 ? "" : "s"} in view`
      : "No alerted incidents here in the last hour.";
  }

  map.on("moveend", () => { clearTimeout(pending); pending = setTimeout(load, 250); });
  load();
  setInterval(load, 60000);
})();
