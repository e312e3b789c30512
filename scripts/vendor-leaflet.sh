#!/usr/bin/env bash
# Re-vendors Leaflet's dist files from the npm registry into server/web/static/vendor/.
# geopush serves them itself: the console and the public map need no CDN and no build step.
set -euo pipefail
version=1.9.4
sha256=84c65a256e50657896f54c33bd857b6849ebe94c817803be818bf32a3dde0b77
dest="$(dirname "$0")/../server/web/static/vendor/leaflet-$version"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "leaflet@$version" >/dev/null)
echo "$sha256  $work/leaflet-$version.tgz" | sha256sum -c -
tar xzf "$work/leaflet-$version.tgz" -C "$work"
mkdir -p "$dest/images"
cp "$work/package/dist/leaflet.js" "$work/package/dist/leaflet.css" "$dest/"
cp "$work/package/dist/images/"*.png "$dest/images/"
cp "$work/package/LICENSE" "$dest/LICENSE"
echo "Leaflet $version vendored into $dest"
