#!/usr/bin/env bash
# Interoperability check between Myelin and Dendrite v0.13.8 on one host.
# Runs both servers with federation over TLS (certificates from a test CA
# made here), then drives them with curl: a Myelin user joins a Dendrite
# room, a Dendrite user joins a Myelin room, and messages flow both ways.
# See docs/interop.md for what it printed. Nothing here is Dendrite code:
# it runs the released binaries, built from the Go module proxy with
#   GOBIN=/work/tools go install github.com/matrix-org/dendrite/cmd/{dendrite,generate-config,generate-keys}@v0.13.8
#
# Usage: docs/interop-dendrite.sh [workdir]   (from the repository root)
set -euo pipefail
DENDRITE_BIN=${DENDRITE_BIN:-/work/tools}
W=${1:-$(mktemp -d /tmp/myelin-interop.XXXXXX)}
REPO=$(pwd)
M_NAME=localhost:8448 D_NAME=localhost:8449
M_CLIENT=http://127.0.0.1:8010 D_CLIENT=http://127.0.0.1:8009
mkdir -p "$W/myelin" "$W/dendrite"
cd "$W"
echo "workdir: $W"

# 1. The test CA and one certificate for "localhost" (both servers' host).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=Myelin interop test CA" -keyout ca.key -out ca.crt 2>/dev/null
(cd "$REPO" && go build -o "$W/myelin-bin" ./cmd/myelin)
./myelin-bin generate-tls -server-name localhost -ca-cert ca.crt -ca-key ca.key \
  -out-cert localhost.crt -out-key localhost.key

# 2. Myelin: federation on 127.0.0.1:8448 (TLS), clients on 8010.
(cd myelin && timeout 3 ../myelin-bin serve -config myelin.yaml >/dev/null 2>&1 || true)
python3 - "$W" <<'PY'
import sys, yaml
w = sys.argv[1]
p = f"{w}/myelin/myelin.yaml"
c = yaml.safe_load(open(p))
c["global"]["server_name"] = "localhost:8448"
c["http"]["listen"] = "127.0.0.1:8010"
c["client_api"]["registration"] = "open"
c["client_api"]["rate_limits"]["enabled"] = False
c["room_server"]["default_room_version"] = "10"   # Dendrite 0.13.8 knows versions up to 10
c["room_server"]["encrypt_private_rooms"] = False
f = c["federation_api"]
f.update(enabled=True, listen="127.0.0.1:8448", tls_cert=f"{w}/localhost.crt", tls_key=f"{w}/localhost.key",
         trusted_ca_file=f"{w}/ca.crt", min_backoff="1s", max_backoff="10s")
yaml.safe_dump(c, open(p, "w"))
PY
rm -rf myelin/myelin-data   # a fresh signing key and database for the new name
(cd myelin && exec ../myelin-bin serve -config myelin.yaml >../myelin.log 2>&1) &
M_PID=$!

# 3. Dendrite: federation on 127.0.0.1:8449 (TLS with the same CA-issued
# certificate), clients on 8009. It does not trust our CA, so outbound
# TLS validation is off (federation_api.disable_tls_validation), which
# its config offers for test networks; no notary (no internet here).
cd dendrite
"$DENDRITE_BIN/generate-keys" --private-key matrix_key.pem >/dev/null
mkdir -p "$W/dendrite/data"
"$DENDRITE_BIN/generate-config" -server "$D_NAME" -dir "$W/dendrite/data" > dendrite.yaml
python3 - "$W" <<'PY'
import sys, yaml
w = sys.argv[1]
p = f"{w}/dendrite/dendrite.yaml"
c = yaml.safe_load(open(p))
c["global"]["private_key"] = f"{w}/dendrite/matrix_key.pem"
c["global"]["trusted_third_party_id_servers"] = []
c["client_api"]["registration_disabled"] = False
c["client_api"]["rate_limiting"]["enabled"] = False
c["federation_api"]["disable_tls_validation"] = True
c["federation_api"]["key_perspectives"] = []
c["federation_api"]["prefer_direct_fetch"] = True
c["logging"] = [{"type": "std", "level": "info"}]
yaml.safe_dump(c, open(p, "w"))
PY
"$DENDRITE_BIN/dendrite" -config dendrite.yaml -really-enable-open-registration \
  -http-bind-address 127.0.0.1:8009 -https-bind-address 127.0.0.1:8449 \
  -tls-cert "$W/localhost.crt" -tls-key "$W/localhost.key" >../dendrite.log 2>&1 &
D_PID=$!
cd ..
trap 'kill $M_PID $D_PID 2>/dev/null || true' EXIT

wait_up() { for _ in $(seq 1 100); do curl -sf "$1/_matrix/client/versions" >/dev/null && return 0; sleep 0.2; done; echo "$1 did not start"; return 1; }
wait_up "$M_CLIENT"; wait_up "$D_CLIENT"
echo "Myelin ($M_NAME) and Dendrite ($D_NAME, $("$DENDRITE_BIN/dendrite" -version)) are up"

step() { echo; echo "== $*"; }
register() { # base user -> token
  curl -sf -X POST "$1/_matrix/client/v3/register" -H 'Content-Type: application/json' \
    -d "{\"username\":\"$2\",\"password\":\"interop-password-1\",\"auth\":{\"type\":\"m.login.dummy\"}}" | jq -r .access_token
}
call() { # method base token path [body]
  curl -s -X "$1" "$2$4" -H "Authorization: Bearer $3" -H 'Content-Type: application/json' ${5:+-d "$5"}
}
txn=0
send() { # base token room body
  txn=$((txn+1))
  call PUT "$1" "$2" "/_matrix/client/v3/rooms/$(jq -rn --arg r "$3" '$r|@uri')/send/m.room.message/t$txn$RANDOM" \
    "{\"msgtype\":\"m.text\",\"body\":\"$4\"}"
}
await_message() { # base token room body
  for _ in $(seq 1 60); do
    if call GET "$1" "$2" "/_matrix/client/v3/rooms/$(jq -rn --arg r "$3" '$r|@uri')/messages?dir=b&limit=50" |
       jq -e --arg b "$4" '[.chunk[]? | select(.type=="m.room.message" and .content.body==$b)] | length > 0' >/dev/null; then
      echo "   seen: \"$4\""; return 0
    fi
    sleep 0.5
  done
  echo "   NOT seen within 30s: \"$4\""; failed=$((failed+1)); return 1
}
failed=0

step "register @alice:$M_NAME and @dan:$D_NAME"
A_TOK=$(register "$M_CLIENT" alice); D_TOK=$(register "$D_CLIENT" dan)
[ -n "$A_TOK" ] && [ "$A_TOK" != null ] && [ -n "$D_TOK" ] && [ "$D_TOK" != null ] && echo "   ok"

step "server keys: each fetched over TLS by the other's name"
curl -s --cacert ca.crt "https://$M_NAME/_matrix/key/v2/server" | jq -c '{server_name, verify_keys}'
curl -sk "https://$D_NAME/_matrix/key/v2/server" | jq -c '{server_name, verify_keys}'

step "Dendrite room: dan creates #dendrite-lobby:$D_NAME (public)"
D_ROOM=$(call POST "$D_CLIENT" "$D_TOK" /_matrix/client/v3/createRoom \
  '{"preset":"public_chat","room_alias_name":"dendrite-lobby","name":"Dendrite lobby"}' | jq -r .room_id)
echo "   room $D_ROOM"
step "alice (Myelin) joins it by alias"
call POST "$M_CLIENT" "$A_TOK" "/_matrix/client/v3/join/$(jq -rn --arg r "#dendrite-lobby:$D_NAME" '$r|@uri')" '{}' | jq -c .
send "$D_CLIENT" "$D_TOK" "$D_ROOM" "hello from Dendrite" >/dev/null
await_message "$M_CLIENT" "$A_TOK" "$D_ROOM" "hello from Dendrite" || true
send "$M_CLIENT" "$A_TOK" "$D_ROOM" "hello from Myelin, in Dendrite's room" >/dev/null
await_message "$D_CLIENT" "$D_TOK" "$D_ROOM" "hello from Myelin, in Dendrite's room" || true

step "Myelin room: alice creates #myelin-lobby:$M_NAME (public, version 10)"
M_ROOM=$(call POST "$M_CLIENT" "$A_TOK" /_matrix/client/v3/createRoom \
  '{"preset":"public_chat","room_alias_name":"myelin-lobby","name":"Myelin lobby"}' | jq -r .room_id)
echo "   room $M_ROOM"
step "dan (Dendrite) joins it by alias"
call POST "$D_CLIENT" "$D_TOK" "/_matrix/client/v3/join/$(jq -rn --arg r "#myelin-lobby:$M_NAME" '$r|@uri')" '{}' | jq -c .
send "$M_CLIENT" "$A_TOK" "$M_ROOM" "hello from Myelin" >/dev/null
await_message "$D_CLIENT" "$D_TOK" "$M_ROOM" "hello from Myelin" || true
send "$D_CLIENT" "$D_TOK" "$M_ROOM" "hello from Dendrite, in Myelin's room" >/dev/null
await_message "$M_CLIENT" "$A_TOK" "$M_ROOM" "hello from Dendrite, in Myelin's room" || true

echo; echo "logs: $W/myelin.log $W/dendrite.log"
if [ "$failed" -ne 0 ]; then echo "$failed step(s) failed"; exit 1; fi
echo "all steps passed"
