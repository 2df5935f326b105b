#!/usr/bin/env bash
# The `make run` demo: bunq-sandbox + bunq-sessiond on this machine, a PSD2 provider, two API-key identities and
# one bunq user connected by OAuth, with short sessions so renewals happen while you watch; the signing proxy and
# the metrics endpoint on; money moved between two users through the proxy and bunq's callback received.
# Ctrl-C stops everything.
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

step "two sandbox users' API keys, for the identities 'ops' and 'bob'"
for name in ops bob; do
  curl -sf -X POST "$BASE/v1/sandbox-user-person" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Response"][0]["ApiKey"]["api_key"])' > "$DEMO_DIR/$name.key"
  chmod 600 "$DEMO_DIR/$name.key"
  echo "stored in $DEMO_DIR/$name.key"
done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
METRICS_PORT="$(free_port)"

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
proxy: {socket: $DEMO_DIR/proxy.sock}
metrics: {listen: '127.0.0.1:$METRICS_PORT'}
state: {directory: $DEMO_DIR/state}
provider:
  certificate: $DEMO_DIR/eidas-cert.pem
  private_key: $DEMO_DIR/eidas-key.pem
  oauth_redirect_uris: [https://demo.example/bunq/callback]
api_keys:
  - {name: ops, key_file: $DEMO_DIR/ops.key}
  - {name: bob, key_file: $DEMO_DIR/bob.key}
access:
  admin: {users: [$(id -u)]}
  contexts: {"*": {users: [$(id -u)]}}
YAML
"$BIN/bunq-sessiond" --config "$DEMO_DIR/bunq-sessiond.yaml" --check-config
"$BIN/bunq-sessiond" --config "$DEMO_DIR/bunq-sessiond.yaml" > "$DEMO_DIR/daemon.log" 2>&1 &
pids+=($!)
all_live() {
  "${CTL[@]}" list --json 2>/dev/null | python3 -c '
import json, sys
contexts = json.load(sys.stdin).get("contexts", [])
names = {c.get("name") for c in contexts if c.get("state") == "live"}
sys.exit(0 if {"provider", "ops", "bob"} <= names else 1)'
}
for _ in $(seq 600); do
  all_live && break
  sleep 0.2
done
all_live || { echo "the provider, ops and bob did not all become live (see $DEMO_DIR/daemon.log)"; exit 1; }
echo "ready: the provider is registered, ops and bob are live (log: $DEMO_DIR/daemon.log)"
echo "proxy: $DEMO_DIR/proxy.sock   metrics: http://127.0.0.1:$METRICS_PORT/metrics"

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

step "money through the proxy: ops pays bob, and bob's application gets bunq's callback"
# Every call goes through the daemon's proxy, which adds the session token and signs the body: the application
# only names the context. The callback receiver is the repository's scripts/callback-receiver.py.
api() {  # api CONTEXT METHOD PATH [BODY]
  local args=(-sf --unix-socket "$DEMO_DIR/proxy.sock" -H "X-Bunq-Context: $1" -X "$2")
  if [ $# -ge 4 ]; then args+=(-H 'Content-Type: application/json' --data-binary "$4"); fi
  curl "${args[@]}" "http://bunq$3"
}
account_of() {  # prints USER_ID ACCOUNT_ID IBAN for a context's first current account
  local user
  user="$(api "$1" GET /v1/user | python3 -c 'import json,sys; print(next(iter(json.load(sys.stdin)["Response"][0].values()))["id"])')"
  api "$1" GET "/v1/user/$user/monetary-account-bank" | python3 -c '
import json, sys
account = json.load(sys.stdin)["Response"][0]["MonetaryAccountBank"]
print(sys.argv[1], account["id"], account["alias"][0]["value"])' "$user"
}
balance() {  # balance CONTEXT USER_ID ACCOUNT_ID
  api "$1" GET "/v1/user/$2/monetary-account/$3" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Response"][0]["MonetaryAccountBank"]["balance"]["value"])'
}
read -r OPS_USER OPS_ACCOUNT OPS_IBAN < <(account_of ops)
read -r BOB_USER BOB_ACCOUNT BOB_IBAN < <(account_of bob)
echo "ops: user $OPS_USER, account $OPS_ACCOUNT ($OPS_IBAN), balance $(balance ops "$OPS_USER" "$OPS_ACCOUNT") EUR"
echo "bob: user $BOB_USER, account $BOB_ACCOUNT ($BOB_IBAN), balance $(balance bob "$BOB_USER" "$BOB_ACCOUNT") EUR"
CALLBACK_PORT="$(free_port)"
python3 scripts/callback-receiver.py "$CALLBACK_PORT" "$DEMO_DIR/callbacks" > "$DEMO_DIR/callbacks.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$DEMO_DIR/callbacks.log" 2>/dev/null && break; sleep 0.1; done
api bob POST "/v1/user/$BOB_USER/notification-filter-url" \
  "{\"notification_filters\":[{\"category\":\"PAYMENT\",\"notification_target\":\"http://127.0.0.1:$CALLBACK_PORT/bunq\"}]}" > /dev/null
echo "bob's application subscribed to PAYMENT callbacks at http://127.0.0.1:$CALLBACK_PORT/bunq"
api ops POST "/v1/user/$OPS_USER/monetary-account/$OPS_ACCOUNT/payment" \
  "{\"amount\":{\"value\":\"12.50\",\"currency\":\"EUR\"},\"counterparty_alias\":{\"type\":\"IBAN\",\"value\":\"$BOB_IBAN\",\"name\":\"Bob\"},\"description\":\"demo: lunch\"}" > /dev/null
echo "ops paid bob 12.50 EUR: ops now has $(balance ops "$OPS_USER" "$OPS_ACCOUNT") EUR, bob $(balance bob "$BOB_USER" "$BOB_ACCOUNT") EUR"
for _ in $(seq 100); do [ -s "$DEMO_DIR/callbacks/1.sig" ] && break; sleep 0.1; done
[ -s "$DEMO_DIR/callbacks/1.sig" ] || { echo "no callback arrived (see $DEMO_DIR/callbacks.log)"; exit 1; }
"${CTL[@]}" token bob --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["server_public_key"])' > "$DEMO_DIR/bob-server.pem"
base64 -d "$DEMO_DIR/callbacks/1.sig" > "$DEMO_DIR/callbacks/1.sig.bin"
if openssl dgst -sha256 -verify "$DEMO_DIR/bob-server.pem" -signature "$DEMO_DIR/callbacks/1.sig.bin" \
     "$DEMO_DIR/callbacks/1.body" > /dev/null; then
  verified="its signature verifies with bob's server key"
else
  echo "the callback's signature does not verify"; exit 1
fi
python3 -c '
import json, sys
n = json.load(open(sys.argv[1]))["NotificationUrl"]
p = n["object"]["Payment"]
print("callback received: %s %s, %s EUR \"%s\", %s" % (n["category"], n["event_type"], p["amount"]["value"],
                                                      p["description"], sys.argv[2]))' \
  "$DEMO_DIR/callbacks/1.body" "$verified"

step "bunq-sessionctl status, refreshing (Ctrl-C stops everything)"
started=$SECONDS
while :; do
  if [ -t 1 ]; then clear; fi
  date '+%H:%M:%S'
  "${CTL[@]}" status || true
  echo
  echo "try: bunq-sessionctl token provider   |   curl -H \"X-Bunq-Client-Authentication: \$(bunq-sessionctl token $CONTEXT)\" ..."
  echo "     curl --unix-socket $DEMO_DIR/proxy.sock -H 'X-Bunq-Context: ops' http://bunq/v1/user   |   curl 127.0.0.1:$METRICS_PORT/metrics"
  echo "     (export BUNQ_SESSIOND_SOCKET=$DEMO_DIR/socket; binaries in $BIN)"
  if [ -n "${DEMO_SECONDS:-}" ] && [ $((SECONDS - started)) -ge "$DEMO_SECONDS" ]; then break; fi
  sleep 2
done
