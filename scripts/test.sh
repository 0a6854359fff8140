#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, then run lint, types and
# every test. PostgreSQL and RabbitMQ must be running (see .ci/run, which starts them).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: docker-compose validates compose/ without a container engine;
# the runbooks' commands (run by a test) use jq, curl and openssl; chromium below.
missing=()
for pkg in docker-compose jq curl openssl; do
  command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# The operator console's browser tests (tests/ui) drive Debian's chromium through its
# chromedriver; Selenium is pointed at /usr/bin/chromedriver and downloads nothing.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get install -y -q "${missing[@]}" >/dev/null \
    || { $sudo_cmd apt-get update -q >/dev/null && $sudo_cmd apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

# Official Fabric binaries for the real-network tests (tests/fabric/real, the chain
# matrix, the chaos run), unpacked into .fabric/ from the project's archive folder:
# FABRIC_ARCHIVES if set, else ../shared/fabric beside this checkout, else beside the
# repository this one was cloned from (a CI clone elsewhere). Missing: an error,
# never a skipped test.
fabric_archives=""
origin=$(git config --get remote.origin.url 2>/dev/null || true)
for dir in "${FABRIC_ARCHIVES:-}" ../shared/fabric ${origin:+"$origin/../shared/fabric"}; do
  if [ -n "$dir" ] && [ -f "$dir/install.sh" ]; then fabric_archives=$dir; break; fi
done
[ -n "$fabric_archives" ] || {
  echo "Fabric archives not found: set FABRIC_ARCHIVES to the folder holding install.sh and fabric-*-linux-amd64.tar.xz (../shared/fabric here)" >&2
  exit 2
}
bash "$fabric_archives/install.sh" .fabric >/dev/null
bash "$fabric_archives/install.sh" .fabric 3.1.5 >/dev/null

python3 -m venv .venv
# The product with its dev extra, the chaincode and the devnet tools: three
# distributions (README, "Two commands on a fresh machine"), all editable.
.venv/bin/pip install -q -e '.[dev]' -e ./chaincode -e ./tools
exec .venv/bin/python -m scripts.check "$@"
