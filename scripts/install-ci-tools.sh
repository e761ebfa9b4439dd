#!/usr/bin/env bash
# What CI needs beyond `make test`'s Python packages, from Debian's packages (root, as CI runs): headless
# Chromium for the live view's end-to-end test, and promtool (package `prometheus`) for the alert rules'
# tests. Both tests skip with the reason when the tool is missing, so a developer's `make test` runs
# without them. Idempotent; the prometheus package's service is never left running.
set -euo pipefail
missing=()
command -v chromium > /dev/null || missing+=(chromium)
command -v promtool > /dev/null || missing+=(prometheus)
if ((${#missing[@]} == 0)); then
  echo "CI tools present: chromium, promtool"
  exit 0
fi
sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
if command -v systemctl > /dev/null && systemctl is-active --quiet prometheus 2> /dev/null; then
  $sudo systemctl disable --now prometheus
fi
echo "installed: ${missing[*]}"
