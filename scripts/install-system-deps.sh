#!/usr/bin/env bash
# Installs the system packages geopush needs when they are missing (Debian/Ubuntu):
# PostgreSQL with PostGIS for the newest installed server version, redis-server,
# promtool (Debian's prometheus package: `make test` checks docs/prometheus/alerts.yml),
# chromium (the console's browser tests drive it with Playwright), h2load (Debian's
# nghttp2-client: the fan-out benchmark's ceiling, run at tiny scale by the suite) and
# systemd-analyze (`make test` verifies the units in deploy/systemd/).
# Does nothing when everything is present, so `make run` / `make test` stay fast.
set -euo pipefail

need=()
pg_version=""
if [ -d /usr/lib/postgresql ]; then
  pg_version=$(ls /usr/lib/postgresql | grep -E '^[0-9]+$' | sort -n | tail -n 1 || true)
fi
if [ -z "$pg_version" ] || [ ! -x "/usr/lib/postgresql/$pg_version/bin/initdb" ]; then
  need+=(postgresql postgis)
elif ! ls "/usr/share/postgresql/$pg_version/extension/postgis.control" >/dev/null 2>&1; then
  need+=("postgresql-$pg_version-postgis-3")
fi
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "geopush: please install: ${need[*]} (no apt-get here)" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "geopush: need root (or sudo) to install: ${need[*]}" >&2; exit 1
  fi
fi
echo "geopush: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo env RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null

if [[ " ${need[*]} " == *" prometheus "* ]]; then
  # Only promtool is wanted: no Prometheus server left running on 9090 (RUNLEVEL=1
  # kept invoke-rc.d from starting it; systemd starts it regardless, so stop it there).
  if [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/prometheus ]; then
    $sudo /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    $sudo update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
fi
