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

# Official Fabric binaries for the real-network tests (tests/fabric/real), from the
# archives in ../shared/fabric; a missing archive is an error, not a skipped test.
[ -f ../shared/fabric/install.sh ] || { echo "../shared/fabric/install.sh is missing (Fabric binaries)" >&2; exit 2; }
bash ../shared/fabric/install.sh .fabric >/dev/null
bash ../shared/fabric/install.sh .fabric 3.1.5 >/dev/null

python3 -m venv .venv
.venv/bin/pip install -q -e '.[dev]'
exec .venv/bin/python -m scripts.check "$@"
