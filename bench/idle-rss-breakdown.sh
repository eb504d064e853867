#!/bin/bash
# bench/idle-rss-breakdown.sh BIN PORT: start BIN as bench/run.sh does, wait until up, sleep 5, print VmRSS and breakdown.
BIN=$1; PORT=$2; D=$(mktemp -d /tmp/idle-rss.XXXX)
cd "$D"
MYELIN_CLIENT_API_REGISTRATION=open MYELIN_CLIENT_API_RATE_LIMITS_ENABLED=false MYELIN_HTTP_LISTEN=127.0.0.1:$PORT MYELIN_LOGGING_LEVEL=warn "$BIN" serve -config "$D/myelin.yaml" >"$D/stdout.log" 2>&1 &
P=$!
for i in $(seq 120); do curl -s -o /dev/null "http://127.0.0.1:$PORT/_matrix/client/versions" && break; sleep 0.5; done
sleep 5
grep -E "VmRSS|RssAnon|RssFile|Threads" /proc/$P/status | tr -s ' \t' ' ' | tr '\n' ';'; echo
awk '/^[0-9a-f]+-/{name=$6" "$2; if($6=="")name="[anon] "$2} /^Rss:/{r[name]+=$2} END{for(n in r) if(r[n]>=64) printf "  %6d KiB %s\n", r[n], n}' /proc/$P/smaps | sort -rn | head -8
kill -TERM $P; wait $P 2>/dev/null
rm -rf "$D"
