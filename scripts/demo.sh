#!/usr/bin/env bash
# The `make run` demo: bunq-sandbox + bunq-sessiond on this machine, a PSD2 provider, an API-key identity and one
# bunq user connected by OAuth, with short sessions so renewals happen while you watch. Ctrl-C stops everything.
#
#   DEMO_DIR      where state, config and logs go (default: ./demo, gitignored)
#   DEMO_SECONDS  stop by itself after this many seconds (CI); default: run until Ctrl-C
#   SESSION_TIMEOUT  session lifetime in the emulator, seconds (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$(swift build --show-bin-path)"
DEMO_DIR="${DEMO_DIR:-$PWD/demo}"
SESSION_TIMEOUT="${SESSION_TIMEOUT:-60}"
mkdir -p "$DEMO_DIR"
chmod 700 "$DEMO_DIR"
CTL=("$BIN/bunq-sessionctl")
export BUNQ_SESSIOND_SOCKET="$DEMO_DIR/socket"
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped. State, config and logs are in $DEMO_DIR"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "pseudo eIDAS certificate (as bunq's docs show)"
if [ ! -f "$DEMO_DIR/eidas-cert.pem" ]; then
  openssl req -x509 -newkey rsa:2048 -keyout "$DEMO_DIR/eidas-key.pem" -out "$DEMO_DIR/eidas-cert.pem" -days 365 -nodes \
    -subj '/CN=Demo Fintech PISP AISP/C=NL' 2>/dev/null
  chmod 600 "$DEMO_DIR/eidas-key.pem"
  echo "made $DEMO_DIR/eidas-cert.pem (CN=Demo Fintech PISP AISP)"
else
  echo "reusing $DEMO_DIR/eidas-cert.pem"
fi

step "bunq-sandbox on a free loopback port (sessions live ${SESSION_TIMEOUT}s)"
"$BIN/bunq-sandbox" --port 0 --session-timeout "$SESSION_TIMEOUT" --psd2-first-session-timeout "$SESSION_TIMEOUT" \
  --rate-limit-scale 0.1 > "$DEMO_DIR/sandbox.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$DEMO_DIR/sandbox.log" 2>/dev/null && break; sleep 0.1; done
BASE="$(head -1 "$DEMO_DIR/sandbox.log" | sed 's/^listening on //')"
echo "$BASE"

step "a sandbox user's API key for the identity 'ops'"
curl -sf -X POST "$BASE/v1/sandbox-user-person" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["Response"][0]["ApiKey"]["api_key"])' > "$DEMO_DIR/ops.key"
chmod 600 "$DEMO_DIR/ops.key"
echo "stored in $DEMO_DIR/ops.key"

step "bunq-sessiond with a generated demo configuration"
cat > "$DEMO_DIR/bunq-sessiond.yaml" <<YAML
bunq:
  environment: sandbox
  api_base_url: $BASE/v1/
  oauth_authorize_url: $BASE/auth
  oauth_token_url: $BASE/v1/token
  # bunq's rate limits at a tenth (session-server one call per 3 s instead of 30 s), matching the sandbox, so the
  # demo's 60-s sessions fit the budget: the status shows how much of it they use.
  rate_limits: bunq
  rate_limit_scale: 0.1
  psd2_first_session_timeout: $SESSION_TIMEOUT
socket: {path: $DEMO_DIR/socket}
state: {directory: $DEMO_DIR/state}
provider:
  certificate: $DEMO_DIR/eidas-cert.pem
  private_key: $DEMO_DIR/eidas-key.pem
  oauth_redirect_uris: [https://demo.example/bunq/callback]
api_keys:
  - {name: ops, key_file: $DEMO_DIR/ops.key}
access:
  admin: {users: [$(id -u)]}
  contexts: {"*": {users: [$(id -u)]}}
YAML
"$BIN/bunq-sessiond" --config "$DEMO_DIR/bunq-sessiond.yaml" --check-config
"$BIN/bunq-sessiond" --config "$DEMO_DIR/bunq-sessiond.yaml" > "$DEMO_DIR/daemon.log" 2>&1 &
pids+=($!)
provider_live() {
  "${CTL[@]}" list --json 2>/dev/null | python3 -c '
import json, sys
contexts = json.load(sys.stdin).get("contexts", [])
sys.exit(0 if any(c.get("name") == "provider" and c.get("state") == "live" for c in contexts) else 1)'
}
for _ in $(seq 600); do
  provider_live && break
  sleep 0.2
done
provider_live || { echo "the provider did not become live (see $DEMO_DIR/daemon.log)"; exit 1; }
echo "ready: the provider is registered and live (log: $DEMO_DIR/daemon.log)"

step "connect a bunq user by OAuth: oauth-url -> the sandbox's /auth -> oauth-complete"
AUTH_JSON="$("${CTL[@]}" oauth-url --json)"
URL="$(printf '%s' "$AUTH_JSON" | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')"
echo "authorize URL: $URL"
REDIRECT="$(curl -s -o /dev/null -w '%{redirect_url}' "$URL")"
echo "bunq redirected to: ${REDIRECT%%code=*}code=..."
CODE="$(python3 -c 'import sys,urllib.parse as u; print(u.parse_qs(u.urlparse(sys.argv[1]).query)["code"][0])' "$REDIRECT")"
STATE="$(python3 -c 'import sys,urllib.parse as u; print(u.parse_qs(u.urlparse(sys.argv[1]).query)["state"][0])' "$REDIRECT")"
CONTEXT="$("${CTL[@]}" oauth-complete --code "$CODE" --state "$STATE")"
echo "connected: $CONTEXT"

step "bunq-sessionctl status, refreshing (Ctrl-C stops everything)"
started=$SECONDS
while :; do
  if [ -t 1 ]; then clear; fi
  date '+%H:%M:%S'
  "${CTL[@]}" status || true
  echo
  echo "try: bunq-sessionctl token provider   |   curl -H \"X-Bunq-Client-Authentication: \$(bunq-sessionctl token $CONTEXT)\" ..."
  echo "     (export BUNQ_SESSIOND_SOCKET=$DEMO_DIR/socket; binaries in $BIN)"
  if [ -n "${DEMO_SECONDS:-}" ] && [ $((SECONDS - started)) -ge "$DEMO_SECONDS" ]; then break; fi
  sleep 2
done
