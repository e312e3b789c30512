/* Shared by the console and the public map: a Leaflet map with the configured tiles,
   or, with none (no internet), a plain background with a coordinate grid. */
"use strict";
window.geopushMaps = (function () {
  const config = JSON.parse(document.body.dataset.config || "{}");

  function grid(map) {
    const layer = L.layerGroup().addTo(map);
    function draw() {
      layer.clearLayers();
      const b = map.getBounds();
      const span = Math.max(b.getEast() - b.getWest(), 1e-6);
      const step = Math.pow(10, Math.floor(Math.log10(span / 4)));
      const style = { color: "#b8c2cc", weight: 1, interactive: false };
      for (let x = Math.floor(b.getWest() / step) * step; x <= b.getEast(); x += step) {
        L.polyline([[b.getSouth(), x], [b.getNorth(), x]], style).addTo(layer);
      }
      for (let y = Math.floor(b.getSouth() / step) * step; y <= b.getNorth(); y += step) {
        L.polyline([[y, b.getWest()], [y, b.getEast()]], style).addTo(layer);
      }
    }
    map.on("moveend", draw);
    draw();
  }

  /* view: [lat, lon, zoom] to open on, else the configured centre. */
  function create(element, options, view) {
    const map = L.map(element, Object.assign({ keyboard: true }, options || {}));
    if (view) map.setView([view[0], view[1]], view[2]);
    else map.setView(config.center || [47.6062, -122.3321], config.zoom || 11);
    if (config.tilesUrl) {
      L.tileLayer(config.tilesUrl, { attribution: config.tilesAttribution || "", maxZoom: 19 })
        .addTo(map);
    } else {
      grid(map);
    }
    return map;
  }

  return { config: config, create: create };
})();
