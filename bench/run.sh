#!/usr/bin/env bash
# bench/run.sh — measure Dendrite v0.13.8 and Myelin with cmd/myelin-bench, one
# after the other on this machine, and write docs/benchmarks.md from the
# tool's JSON output. Every figure in that file comes from this script.
#
#   bench/run.sh                      # both servers, default sizes (~5 min)
#   SERVERS=dendrite bench/run.sh     # one server only
#   QUICK=1 bench/run.sh              # small sizes, for trying the script
#   MYELIN_BENCH_POSTGRES=postgres://user:pass@127.0.0.1/db?sslmode=disable bench/run.sh
#                                     # adds a Myelin-on-PostgreSQL column (fresh schema, dropped after)
#   FSYNC_DELAY_MS=1.8 bench/run.sh   # slow-disk mode: each fsync the servers make through the C
#                                     # library (SQLite's) takes at least 1.8 ms (bench/fsyncdelay.c)
#
# Sizes (environment): REGISTER_N ROOMS_N SEND_N SEND_CONC SEND_CONC_N
# OPEN_RATE OPEN_N OPEN_WORKERS FANOUT_LISTENERS FANOUT_N FANOUT_RATE
# FANOUT_BIG_LISTENERS FANOUT_BIG_N IS_ROOMS IS_PER_ROOM IS_REPEAT IS_BIG_ROOMS. OUT=path writes the report elsewhere.
# Dendrite is built with `go install` into $TOOLS (default /work/tools, or
# ~/.cache/myelin-bench/tools) when it is not there yet.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z ${SERVERS:-} ]]; then
	SERVERS="dendrite myelin"
	# A PostgreSQL column when a database is given (bench/run.sh prints no figure it did not measure).
	if [[ -n ${MYELIN_BENCH_POSTGRES:-} ]]; then SERVERS="$SERVERS myelin_pg"; fi
fi
OUT=${OUT:-$ROOT/docs/benchmarks.md}
DENDRITE_VERSION=v0.13.8
if [[ -z ${TOOLS:-} ]]; then
	if [[ -d /work/tools ]]; then TOOLS=/work/tools; else TOOLS=$HOME/.cache/myelin-bench/tools; fi
fi
DENDRITE_PORT=${DENDRITE_PORT:-18008}
MYELIN_PORT=${MYELIN_PORT:-18009}

if [[ -n ${QUICK:-} ]]; then
	: "${REGISTER_N:=10}" "${ROOMS_N:=10}" "${SEND_N:=20}" "${SEND_CONC_N:=40}" "${OPEN_N:=20}"
	: "${FANOUT_LISTENERS:=5}" "${FANOUT_N:=10}" "${FANOUT_BIG_LISTENERS:=10}" "${FANOUT_BIG_N:=5}" "${IS_ROOMS:=5}" "${IS_PER_ROOM:=2}" "${IS_REPEAT:=2}" "${IS_BIG_ROOMS:=10}"
fi
REGISTER_N=${REGISTER_N:-50}
ROOMS_N=${ROOMS_N:-100}
SEND_N=${SEND_N:-200}
SEND_CONC=${SEND_CONC:-8}
# 2,400 messages: at ~3,000 msg/s a phase of 400 lasted 130-310 ms, short enough for a
# burst of other load to halve one run's figure (docs/benchmarks.md, "Concurrent senders, part 6").
SEND_CONC_N=${SEND_CONC_N:-2400}
OPEN_RATE=${OPEN_RATE:-10}
OPEN_N=${OPEN_N:-200}
OPEN_WORKERS=${OPEN_WORKERS:-16}
FANOUT_LISTENERS=${FANOUT_LISTENERS:-20}
FANOUT_N=${FANOUT_N:-50}
FANOUT_RATE=${FANOUT_RATE:-2}
FANOUT_BIG_LISTENERS=${FANOUT_BIG_LISTENERS:-200}
FANOUT_BIG_N=${FANOUT_BIG_N:-20}
IS_ROOMS=${IS_ROOMS:-50}
IS_PER_ROOM=${IS_PER_ROOM:-10}
IS_REPEAT=${IS_REPEAT:-5}
IS_BIG_ROOMS=${IS_BIG_ROOMS:-500}
# Slow-disk mode (issue 6's targets are for a disk whose 4 KiB fsync takes
# ~1.8 ms): 0 or empty leaves fsyncs as fast as the disk makes them.
FSYNC_DELAY_MS=${FSYNC_DELAY_MS:-0}

WORK=$(mktemp -d /tmp/myelin-bench.XXXXXX)
SERVER_PID=
cleanup() {
	if [[ -n $SERVER_PID ]]; then stop_server; fi
	if [[ -n ${PG_SCHEMA:-} ]]; then psql -q "$MYELIN_BENCH_POSTGRES" -c "DROP SCHEMA $PG_SCHEMA CASCADE" >/dev/null 2>&1 || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "[run.sh $(date +%H:%M:%S)] $*" >&2; }

# --- build -----------------------------------------------------------------

build() {
	log "building myelin and myelin-bench"
	(cd "$ROOT" && go build -o "$WORK/bin/myelin" ./cmd/myelin && go build -o "$WORK/bin/myelin-bench" ./cmd/myelin-bench)
	BENCH=$WORK/bin/myelin-bench
	MYELIN_COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
	if [[ " $SERVERS " == *" dendrite "* ]] && ! [[ -x $TOOLS/dendrite && -x $TOOLS/generate-config && -x $TOOLS/generate-keys ]]; then
		log "building Dendrite $DENDRITE_VERSION into $TOOLS"
		mkdir -p "$TOOLS"
		# Outside our module, so that Dendrite's own go.mod decides its dependencies.
		(cd "$WORK" && GOBIN=$TOOLS go install \
			github.com/matrix-org/dendrite/cmd/dendrite@$DENDRITE_VERSION \
			github.com/matrix-org/dendrite/cmd/generate-config@$DENDRITE_VERSION \
			github.com/matrix-org/dendrite/cmd/generate-keys@$DENDRITE_VERSION)
	fi
}

# --- servers ---------------------------------------------------------------

# build_fsync_tools: bench/fsyncdelay.c (preloaded into each server: counts
# its fsyncs, and delays them by FSYNC_DELAY_MS) and bench/fsyncprobe.c.
# Without gcc, fsyncs are neither counted nor delayed (and a delay asked
# for is an error).
SHIM=
build_fsync_tools() {
	if ! command -v gcc >/dev/null; then
		if [[ $FSYNC_DELAY_MS != 0 ]]; then log "FSYNC_DELAY_MS needs gcc"; return 1; fi
		log "no gcc: fsyncs are not counted"
		return 0
	fi
	gcc -O2 -Wall -shared -fPIC -o "$WORK/bin/fsyncdelay.so" "$ROOT/bench/fsyncdelay.c" -ldl
	gcc -O2 -Wall -o "$WORK/bin/fsyncprobe" "$ROOT/bench/fsyncprobe.c"
	SHIM=$WORK/bin/fsyncdelay.so
	FSYNC_DELAY_US=$(awk -v ms="$FSYNC_DELAY_MS" 'BEGIN{printf "%d", ms*1000}')
	# The probe: 4 KiB write + fsync, 300 times, without and with the library.
	PROBE_PLAIN=$("$WORK/bin/fsyncprobe" "$WORK/probe.dat" 300)
	PROBE_SHIM=$(LD_PRELOAD=$SHIM FSYNC_DELAY_US=$FSYNC_DELAY_US "$WORK/bin/fsyncprobe" "$WORK/probe.dat" 300)
	log "fsync probe: $PROBE_PLAIN ms plain, $PROBE_SHIM ms through fsyncdelay.so (delay $FSYNC_DELAY_US us)"
}

# server_env DIR: the environment a server starts with (the fsync library).
server_env() {
	if [[ -n $SHIM ]]; then
		echo "LD_PRELOAD=$SHIM" "FSYNC_DELAY_US=$FSYNC_DELAY_US" "FSYNC_COUNT_FILE=$1/fsync.count"
	fi
}

# fsync_count: the calls the running server made so far (0 without the library).
fsync_count() {
	local n
	n=$(tr -d ' \n' <"$FSYNC_COUNT_FILE" 2>/dev/null || true)
	echo "${n:-0}"
}

wait_up() { # URL
	for _ in $(seq 1 120); do
		if curl -fsS -o /dev/null "$1/_matrix/client/versions" 2>/dev/null; then return 0; fi
		if ! kill -0 "$SERVER_PID" 2>/dev/null; then log "server exited while starting"; return 1; fi
		sleep 0.5
	done
	log "server did not answer on $1 within 60s"
	return 1
}

port_free() { ! curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/"; }

start_dendrite() {
	local dir=$WORK/dendrite
	mkdir -p "$dir"
	port_free "$DENDRITE_PORT" || { log "port $DENDRITE_PORT is taken"; return 1; }
	"$TOOLS/generate-keys" -private-key "$dir/matrix_key.pem" >/dev/null
	"$TOOLS/generate-config" -dir "$dir" -server localhost >"$dir/dendrite.yaml"
	# Open registration, rate limits off, log level warn, no federation, and
	# the key beside the config. JetStream stays on disk (in_memory: false,
	# storage_path $dir), SQLite stays the database.
	sed -i \
		-e "s|^  private_key: matrix_key.pem|  private_key: $dir/matrix_key.pem|" \
		-e 's|^  registration_disabled: true|  registration_disabled: false|' \
		-e '/^  rate_limiting:/{n;s|enabled: true|enabled: false|}' \
		-e 's|^  disable_federation: false|  disable_federation: true|' \
		-e 's|^  level: info|  level: warn|' \
		"$dir/dendrite.yaml"
	grep -q 'registration_disabled: false' "$dir/dendrite.yaml"
	grep -A1 '^  rate_limiting:' "$dir/dendrite.yaml" | grep -q 'enabled: false'
	grep -q 'in_memory: false' "$dir/dendrite.yaml"
	DENDRITE_CMD="dendrite -config dendrite.yaml -http-bind-address 127.0.0.1:$DENDRITE_PORT -really-enable-open-registration"
	FSYNC_COUNT_FILE=$dir/fsync.count
	(cd "$dir" && exec env $(server_env "$dir") "$TOOLS/dendrite" -config dendrite.yaml -http-bind-address "127.0.0.1:$DENDRITE_PORT" \
		-really-enable-open-registration >"$dir/stdout.log" 2>&1) &
	SERVER_PID=$!
	wait_up "http://127.0.0.1:$DENDRITE_PORT" || { tail -20 "$dir/stdout.log" >&2; return 1; }
}

start_myelin() {
	local dir=$WORK/myelin
	mkdir -p "$dir"
	port_free "$MYELIN_PORT" || { log "port $MYELIN_PORT is taken"; return 1; }
	MYELIN_CMD="MYELIN_CLIENT_API_REGISTRATION=open MYELIN_CLIENT_API_RATE_LIMITS_ENABLED=false MYELIN_HTTP_LISTEN=127.0.0.1:$MYELIN_PORT MYELIN_LOGGING_LEVEL=warn myelin serve -config myelin.yaml"
	FSYNC_COUNT_FILE=$dir/fsync.count
	(cd "$dir" && MYELIN_CLIENT_API_REGISTRATION=open MYELIN_CLIENT_API_RATE_LIMITS_ENABLED=false \
		MYELIN_HTTP_LISTEN=127.0.0.1:$MYELIN_PORT MYELIN_LOGGING_LEVEL=warn \
		exec env $(server_env "$dir") "$WORK/bin/myelin" serve -config "$dir/myelin.yaml" >"$dir/stdout.log" 2>&1) &
	SERVER_PID=$!
	wait_up "http://127.0.0.1:$MYELIN_PORT" || { tail -20 "$dir/stdout.log" >&2; return 1; }
}

# start_myelin_pg: Myelin on PostgreSQL, in a fresh schema of the database
# MYELIN_BENCH_POSTGRES names (a postgres:// URL); the schema is dropped at exit.
start_myelin_pg() {
	local dir=$WORK/myelin_pg
	mkdir -p "$dir"
	port_free "$MYELIN_PORT" || { log "port $MYELIN_PORT is taken"; return 1; }
	FSYNC_COUNT_FILE=$dir/fsync.count
	PG_SCHEMA=bench_$$_$RANDOM
	psql -q -v ON_ERROR_STOP=1 "$MYELIN_BENCH_POSTGRES" -c "CREATE SCHEMA $PG_SCHEMA" >/dev/null
	local sep='?'
	[[ $MYELIN_BENCH_POSTGRES == *\?* ]] && sep='&'
	local url="$MYELIN_BENCH_POSTGRES${sep}search_path=$PG_SCHEMA"
	PG_VERSION=$(psql -tA "$MYELIN_BENCH_POSTGRES" -c "SHOW server_version" | awk '{print $1}')
	PG_SYNC=$(psql -tA "$MYELIN_BENCH_POSTGRES" -c "SHOW synchronous_commit")
	PG_FSYNC=$(psql -tA "$MYELIN_BENCH_POSTGRES" -c "SHOW fsync")
	MYELIN_PG_CMD="MYELIN_DATABASE_ENGINE=postgres MYELIN_DATABASE_POSTGRES_URL=<\$MYELIN_BENCH_POSTGRES, fresh schema> MYELIN_CLIENT_API_REGISTRATION=open MYELIN_CLIENT_API_RATE_LIMITS_ENABLED=false MYELIN_HTTP_LISTEN=127.0.0.1:$MYELIN_PORT MYELIN_LOGGING_LEVEL=warn myelin serve -config myelin.yaml"
	(cd "$dir" && MYELIN_DATABASE_ENGINE=postgres MYELIN_DATABASE_POSTGRES_URL="$url" \
		MYELIN_CLIENT_API_REGISTRATION=open MYELIN_CLIENT_API_RATE_LIMITS_ENABLED=false \
		MYELIN_HTTP_LISTEN=127.0.0.1:$MYELIN_PORT MYELIN_LOGGING_LEVEL=warn \
		exec env $(server_env "$dir") "$WORK/bin/myelin" serve -config "$dir/myelin.yaml" >"$dir/stdout.log" 2>&1) &
	SERVER_PID=$!
	wait_up "http://127.0.0.1:$MYELIN_PORT" || { tail -20 "$dir/stdout.log" >&2; return 1; }
}

stop_server() {
	kill -TERM "$SERVER_PID" 2>/dev/null || true
	for _ in $(seq 1 60); do
		kill -0 "$SERVER_PID" 2>/dev/null || break
		sleep 0.5
	done
	kill -KILL "$SERVER_PID" 2>/dev/null || true
	wait "$SERVER_PID" 2>/dev/null || true
	SERVER_PID=
}

rss_mb() { awk -v f="$2" '$1 == f":" {printf "%.0f", $2/1024}' "/proc/$1/status"; }

# machine_busy_pct SECONDS: how busy all CPUs were over that long, in % of all cores.
machine_busy_pct() {
	local a b
	a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
	sleep "$1"
	b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
	echo "$a $b" | awk '{ if ($4 == $2) print 0; else printf "%.0f", 100 * ($3 - $1) / ($4 - $2) }'
}

# --- scenarios -------------------------------------------------------------

# bench NAME LABEL SCENARIO [FLAGS...]: one run, its JSON appended to
# $WORK/NAME.jsonl. A run that fails still writes its JSON (with its errors).
bench() {
	local name=$1 label=$2 scenario=$3
	shift 3
	local cmd=("$BENCH" "$scenario" -url "$URL" -pid "$SERVER_PID" -json -label "$label" -timeout 3m "$@")
	echo "myelin-bench $scenario -url \$URL -pid \$PID -json -label '$label' -timeout 3m $*" >>"$WORK/$name.commands"
	log "$name: $label"
	local before
	before=$(fsync_count)
	"${cmd[@]}" >>"$WORK/$name.jsonl" 2> >(tee -a "$WORK/$name.log" >&2) || true
	printf '%s\t%s\n' "$label" "$(($(fsync_count) - before))" >>"$WORK/$name.fsyncs"
}

run_scenarios() { # NAME
	local name=$1
	: >"$WORK/$name.jsonl"
	: >"$WORK/$name.commands"
	: >"$WORK/$name.fsyncs"
	bench "$name" "register: $REGISTER_N users, sequential" register -n "$REGISTER_N"
	bench "$name" "rooms: $ROOMS_N private rooms, sequential" rooms -n "$ROOMS_N"
	bench "$name" "send: 1 sender, sequential" send -messages "$SEND_N"
	bench "$name" "send: $SEND_CONC senders, own rooms" send -messages "$SEND_CONC_N" -concurrency "$SEND_CONC"
	bench "$name" "send: $SEND_CONC senders, one room" send -messages "$SEND_CONC_N" -concurrency "$SEND_CONC" -same-room
	bench "$name" "send: open loop $OPEN_RATE msg/s" send -messages "$OPEN_N" -rate "$OPEN_RATE" -concurrency "$OPEN_WORKERS" -same-room
	bench "$name" "initialsync: $IS_ROOMS rooms × $IS_PER_ROOM messages" initialsync -rooms "$IS_ROOMS" -per-room "$IS_PER_ROOM" -repeat "$IS_REPEAT"
	bench "$name" "initialsync: $IS_BIG_ROOMS rooms × $IS_PER_ROOM messages" initialsync -rooms "$IS_BIG_ROOMS" -per-room "$IS_PER_ROOM" -repeat "$IS_REPEAT"
	bench "$name" "fanout: $FANOUT_LISTENERS listeners, $FANOUT_RATE msg/s" fanout -listeners "$FANOUT_LISTENERS" -messages "$FANOUT_N" -rate "$FANOUT_RATE"
	bench "$name" "fanout: $FANOUT_LISTENERS listeners, sender as fast as acknowledged" fanout -listeners "$FANOUT_LISTENERS" -messages "$FANOUT_N"
	bench "$name" "fanout: $FANOUT_BIG_LISTENERS listeners, $FANOUT_RATE msg/s" fanout -listeners "$FANOUT_BIG_LISTENERS" -messages "$FANOUT_BIG_N" -rate "$FANOUT_RATE"
}

# server_binary NAME: the executable start_NAME runs.
server_binary() { if [[ $1 == dendrite ]]; then echo "$TOOLS/dendrite"; else echo "$WORK/bin/myelin"; fi; }

# evict_binary FILE: flush FILE and drop its pages from the page cache, so
# that the server starts from a binary read from disk, as after a reboot.
# A file just written (the build above) sits in the page cache in large
# folios, which the kernel maps whole on the first touch: the same code then
# reads ~3 MB more RSS (docs/benchmarks.md, "idlerss (session 17)"). Every
# server is started this way, Dendrite too.
evict_binary() {
	sync -- "$1"
	dd if="$1" iflag=nocache count=0 status=none
}

# measure NAME: start the server NAME, record idle and peak memory around the scenarios, stop it.
measure() {
	local name=$1
	local load_before
	load_before=$(machine_busy_pct 3)
	evict_binary "$(server_binary "$name")"
	"start_$name"
	URL=http://127.0.0.1:$([[ $name == dendrite ]] && echo "$DENDRITE_PORT" || echo "$MYELIN_PORT")
	sleep 5 # let start-up work settle before reading the idle figure
	local idle
	idle=$(rss_mb "$SERVER_PID" VmRSS)
	local idle_anon idle_file
	idle_anon=$(rss_mb "$SERVER_PID" RssAnon)
	idle_file=$(rss_mb "$SERVER_PID" RssFile)
	local started=$SECONDS
	run_scenarios "$name"
	local peak
	peak=$(rss_mb "$SERVER_PID" VmHWM)
	{
		echo "idle_rss_mb=$idle"
		echo "idle_anon_mb=$idle_anon"
		echo "idle_file_mb=$idle_file"
		echo "peak_rss_mb=$peak"
		echo "busy_before_pct=$load_before"
		echo "scenarios_s=$((SECONDS - started))"
	} >"$WORK/$name.env"
	stop_server
	echo "fsync_after_ms=$(fsync_ms)" >>"$WORK/$name.env"
}

# --- the machine -----------------------------------------------------------

machine_facts() {
	CPU_MODEL=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
	NPROC=$(nproc)
	MEM_GIB=$(awk '/^MemTotal/{printf "%.0f", $2/1024/1024}' /proc/meminfo)
	FS_TYPE=$(df -T "$WORK" | awk 'NR==2{print $2}')
	FSYNC_MS=$(fsync_ms)
}

# fsync_ms: the mean time of 1000 synchronous 4 KiB writes (O_DSYNC: each
# returns only once it is on disk) in the temp dir, in ms.
fsync_ms() {
	local secs
	secs=$(dd if=/dev/zero of="$WORK/fsync.probe" bs=4k count=1000 oflag=dsync 2>&1 | awk '/copied/{for (i=1;i<=NF;i++) if ($i ~ /^s,?$/) print $(i-1)}')
	rm -f "$WORK/fsync.probe"
	awk -v s="$secs" 'BEGIN{printf "%.2f", s*1000/1000}'
}

# --- the report ------------------------------------------------------------

# fsync_table: a Markdown table of each server's fsyncs per scenario.
fsync_table() {
	local name first
	first=$(set -- $SERVERS; echo "$1")
	printf '| scenario |'
	for name in $SERVERS; do printf ' %s |' "$name"; done
	printf '\n|---|'
	for name in $SERVERS; do printf -- '---:|'; done
	printf '\n'
	local i=0 label
	while IFS=$'\t' read -r label _; do
		i=$((i + 1))
		printf '| %s |' "$label"
		for name in $SERVERS; do printf ' %s |' "$(sed -n "${i}p" "$WORK/$name.fsyncs" | cut -f2)"; done
		printf '\n'
	done <"$WORK/$first.fsyncs"
}

envval() { sed -n "s/^$2=//p" "$WORK/$1.env" 2>/dev/null; }

# HANDWRITTEN_MARK starts the hand-written part of the report, which
# write_report keeps as it is.
HANDWRITTEN_MARK='<!-- hand-written below: bench/run.sh keeps it -->'

write_report() {
	local columns=() name title
	for name in $SERVERS; do
		case $name in
		dendrite) title="Dendrite $DENDRITE_VERSION" ;;
		myelin_pg) title="Myelin $MYELIN_COMMIT (PostgreSQL)" ;;
		*) title="Myelin $MYELIN_COMMIT (SQLite)" ;;
		esac
		columns+=(-column "$title=$WORK/$name.jsonl")
	done
	mkdir -p "$(dirname "$OUT")"
	{
		echo "# Benchmarks"
		echo
		echo "Generated by \`bench/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'); every figure below comes from"
		echo "\`cmd/myelin-bench\`'s JSON output or from the script's own probes. Do not edit by hand: run the script."
		echo
		echo "## Machine"
		echo
		echo "- $NPROC cores ($CPU_MODEL), $MEM_GIB GiB memory, Linux $(uname -r), temp dir on $FS_TYPE."
		echo "- One synchronous 4 KiB write (\`dd bs=4k count=1000 oflag=dsync\`, mean) took $FSYNC_MS ms before the"
		echo "  runs$(for name in $SERVERS; do printf ', %s ms after %s' "$(envval "$name" fsync_after_ms)" "$name"; done):"
		echo "  the floor for any write that is on disk before it is acknowledged. This virtual disk's fsync"
		echo "  time varies from one probe to the next, and every figure below moves with it."
		if [[ $FSYNC_DELAY_MS != 0 ]]; then
			echo "- **Slow-disk mode (\`FSYNC_DELAY_MS=$FSYNC_DELAY_MS\`).** Every \`fsync\`, \`fdatasync\` and \`syncfs\` a server"
			echo "  made through the C library took at least $FSYNC_DELAY_MS ms: the real call, then a sleep until that long after it began (\`bench/fsyncdelay.c\`,"
			echo "  preloaded with \`LD_PRELOAD\`): 300 writes of 4 KiB each followed by \`fsync\` (\`bench/fsyncprobe.c\`)"
			echo "  took $PROBE_PLAIN ms each without it and $PROBE_SHIM ms with it. That covers SQLite's fsyncs (C code,"
			echo "  Myelin's and Dendrite's). It does not cover a Go program's own \`os.File.Sync\` (a direct system"
			echo "  call: Dendrite's JetStream, which is thus not slowed) nor another process (PostgreSQL)."
		elif [[ -n $SHIM ]]; then
			echo "- fsyncs were counted (not delayed) by \`bench/fsyncdelay.c\`, preloaded into each server; 300 writes"
			echo "  of 4 KiB each followed by \`fsync\` took $PROBE_PLAIN ms each plain, $PROBE_SHIM ms through it."
		fi
		echo "- **Shared machine.** Other engineers' builds and tests run on the same 2 cores. Before each"
		echo "  server started, the CPUs were busy:"
		for name in $SERVERS; do
			echo "  $name $(envval "$name" busy_before_pct)% (of all cores, over 3 s)."
		done
		echo "  Each table's row \"other processes' CPU\" is the CPU time that neither the server nor the tool"
		echo "  used during that measurement. Treat the figures as indicative, not as a lab result."
		echo
		echo "## Servers and durability"
		echo
		echo "The servers ran one after the other (never both at once) on 127.0.0.1, each with a fresh"
		echo "data directory in a temp dir, open registration and rate limits off."
		echo
		for name in $SERVERS; do
			if [[ $name == dendrite ]]; then
				echo "- **Dendrite $DENDRITE_VERSION**, built with \`go install github.com/matrix-org/dendrite/cmd/dendrite@$DENDRITE_VERSION\`"
				echo "  (and its \`generate-keys\`, \`generate-config\`). Config: \`generate-config -dir DIR -server localhost\`, then"
				echo "  \`registration_disabled: false\`, \`rate_limiting.enabled: false\`, \`disable_federation: true\`, log level warn."
				echo "  Run: \`$DENDRITE_CMD\`."
				echo "  Durability: SQLite (one file per component) in its default rollback-journal mode with"
				echo "  \`synchronous=FULL\` (Dendrite sets no pragma), so every commit is fsynced; JetStream on disk"
				echo "  with \`SyncAlways\` (Dendrite's embedded NATS), so every stream write is fsynced too."
			elif [[ $name == myelin_pg ]]; then
				echo "- **Myelin $MYELIN_COMMIT (PostgreSQL)**, \`go build ./cmd/myelin\`. Run: \`$MYELIN_PG_CMD\`."
				echo "  Durability: PostgreSQL $PG_VERSION on this machine with \`synchronous_commit=$PG_SYNC\`, \`fsync=$PG_FSYNC\`:"
				echo "  every commit is flushed to the WAL on disk before the request is acknowledged."
			else
				echo "- **Myelin $MYELIN_COMMIT (SQLite)**, \`go build ./cmd/myelin\`. Run: \`$MYELIN_CMD\` (config created on first run)."
				echo "  Durability: SQLite in WAL mode with \`synchronous=FULL\`: every commit fsyncs the WAL before"
				echo "  the request is acknowledged (group commit lets concurrent requests share an fsync)."
			fi
			echo "  Idle RSS 5 s after start (binary evicted from the page cache first, as after a reboot): $(envval "$name" idle_rss_mb) MB (anonymous $(envval "$name" idle_anon_mb) MB, file-backed"
			echo "  $(envval "$name" idle_file_mb) MB: mapped pages of the binary and its libraries); peak RSS over all its runs (VmHWM):"
			echo "  $(envval "$name" peak_rss_mb) MB; the scenarios took $(envval "$name" scenarios_s) s."
		done
		echo
		echo "## Commands"
		echo
		echo "Each run below, with \`\$URL\` the server and \`\$PID\` its process (\`go build ./cmd/myelin-bench\`):"
		echo
		echo '```sh'
		cat "$WORK/$(set -- $SERVERS; echo "$1").commands"
		echo '```'
		echo
		echo "Latency is nearest-rank percentiles of the measured phase only (users, rooms and prepared"
		echo "messages are made first and not timed). \`send\` and \`rooms\` latency is the request's round"
		echo "trip; in open loop it is measured from each message's scheduled time. \`fanout\` latency is from"
		echo "the send (its scheduled time) to the moment each listener's \`/sync\` returned the message, one"
		echo "sample per listener per message. \`initialsync\` times a full \`/sync\` without a since token,"
		echo "repeatedly; \"first sync\" is the user's first one after its rooms were made (what a client"
		echo "waits for after login, the server's caches cold for this user), \"later syncs\" the repeats."
		echo "\"Server CPU\" is the server's utime+stime during the measured phase, from \`/proc/PID/stat\`;"
		echo "peak RSS is VmHWM since the server started. A scenario whose endpoints a server does not"
		echo "have yet shows \"not yet implemented\" with the 404 it answered, and no figures."
		echo
		echo "## Results"
		echo
		"$BENCH" report "${columns[@]}"
		echo
		if [[ -n $SHIM ]]; then
			echo "### fsync calls per scenario"
			echo
			echo "Counted by \`bench/fsyncdelay.c\` over each whole scenario run (its set-up included: users,"
			echo "rooms, prepared messages), through the C library only (SQLite's; not Dendrite's JetStream)."
			echo
			fsync_table
			echo
		fi
		echo "## In-process benchmarks"
		echo
		echo "\`go test -run '^\$' -bench 'BenchmarkEvaluate\$' -benchtime 20000x ./pushserver/\` (Myelin only): push rule"
		echo "evaluation per event per recipient, the spec's default rules plus a content and a room rule"
		echo "per user, 100 recipients per event, the event flattened once and shared."
		echo
		echo '```'
		cat "$WORK/gobench.txt"
		echo '```'
		echo
		echo "The send path (build, sign, auth-check and commit one local message, SQLite with"
		echo "\`synchronous=FULL\`: one sender; 8 rooms in parallel; 8 senders in one room), sync fan-out and"
		echo "initial sync in process, and inbound federation transactions (50 signed PDUs from a fake remote"
		echo "server; signature, auth and storage µs per PDU), run right after the scenarios above."
		echo "\`BenchmarkDeliveryServerTime\`N is the server's share of one delivery to N waiting \`/sync\`"
		echo "requests handed straight to the HTTP handler (no socket, no client decoding), from the"
		echo "commit's notification to each response written (see its doc comment for each metric):"
		echo
		echo '```'
		echo "go test -run '^\$' -bench 'BenchmarkSendEvent' -benchtime 2000x ./roomserver/"
		echo "go test -run '^\$' -bench 'BenchmarkFanout20\$|BenchmarkInitialSync100Rooms' -benchtime 20x ./syncapi/"
		echo "go test -run '^\$' -bench 'BenchmarkDeliveryServerTime(1|20|200)\$' -benchtime 30x ./syncapi/"
		echo "go test -run '^\$' -bench 'BenchmarkInboundTransaction' -benchtime 5x ./federationapi/"
		echo '```'
		echo
		echo '```'
		cat "$WORK/gobench2.txt"
		echo '```'
		# Everything from the hand-written marker on (profiles, notes) is
		# not generated: carry it over from the previous report.
		if [[ -f $OUT ]] && grep -qxF "$HANDWRITTEN_MARK" "$OUT"; then
			echo
			awk -v mark="$HANDWRITTEN_MARK" '$0 == mark { keep = 1 } keep' "$OUT"
		fi
	} >"$OUT.tmp"
	mv "$OUT.tmp" "$OUT"
	log "wrote $OUT"
}

build
build_fsync_tools
machine_facts
for name in $SERVERS; do
	measure "$name"
done
(cd "$ROOT" && go test -run '^$' -bench 'BenchmarkEvaluate$' -benchtime 20000x ./pushserver/) | grep -E '^(Benchmark|cpu:)' >"$WORK/gobench.txt"
(cd "$ROOT" && go test -run '^$' -bench 'BenchmarkSendEvent' -benchtime 2000x ./roomserver/ &&
	go test -run '^$' -bench 'BenchmarkFanout20$|BenchmarkInitialSync100Rooms' -benchtime 20x ./syncapi/ &&
	go test -run '^$' -bench 'BenchmarkDeliveryServerTime(1|20|200)$' -benchtime 30x ./syncapi/ &&
	go test -run '^$' -bench 'BenchmarkInboundTransaction' -benchtime 5x ./federationapi/) |
	grep -E '^(Benchmark|cpu:)' >"$WORK/gobench2.txt" || true
write_report
