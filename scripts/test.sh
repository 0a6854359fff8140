#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, then run lint, types and
# every test. PostgreSQL and RabbitMQ must be running (see .ci/run, which starts them).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: docker-compose validates compose/ without a container engine;
# the runbooks' commands (run by a test) use jq, curl and openssl.
missing=()
for pkg in docker-compose jq curl openssl; do
  command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get install -y -q "${missing[@]}" >/dev/null \
    || { $sudo_cmd apt-get update -q >/dev/null && $sudo_cmd apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

python3 -m venv .venv
.venv/bin/pip install -q -e '.[dev]'
exec .venv/bin/python -m scripts.check "$@"
