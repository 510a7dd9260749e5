#!/usr/bin/env bash
# The idle poll, ota-server against nginx: `wrk -c64 -t2` on
# metadata/timestamp.json, a 200 (no validator) and a 304 (If-None-Match),
# for ota-server on SQLite, on PostgreSQL and with the repository in an S3
# bucket (s3s-fs), and for nginx serving the very same file from disk, in one
# sitting, interleaved over ROUNDS rounds. Prints each case's median
# requests/s and p99, its ratio to nginx and its p99 minus nginx's, and the
# same two figures of every round.
#
#   cargo build --release -p ota-server --bin ota-server
#   bash integration-tests/load/metadata-vs-nginx.sh      # as root; DUR=10 ROUNDS=3 by default
#
# Needs wrk, nginx, curl, python3; PostgreSQL 15 (`postgresql`) and s3s-fs
# (`bash .ci/s3`) for their rows (skipped with a note when missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
T=${OTA_RELEASE_DIR:-$ROOT/target/release}
DUR=${DUR:-10}
for tool in wrk nginx curl python3; do
  command -v "$tool" > /dev/null || { echo "missing: $tool (apt-get install -y $tool)" >&2; exit 2; }
done
[ -x "$T/ota-server" ] || { echo "missing: $T/ota-server (cargo build --release -p ota-server --bin ota-server)" >&2; exit 2; }
W=$(mktemp -d /tmp/ota-metadata-load.XXXXXX)
chmod 755 "$W"
pids=()
PGB=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
  wait 2> /dev/null || true
  [ -n "$PGB" ] && runuser -u postgres -- "$PGB/pg_ctl" -D "$W/pg/data" -m fast stop > /dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT

wait_port() { for _ in $(seq 200); do (echo > /dev/tcp/127.0.0.1/$1) 2> /dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

# A small repository: a ~2 KB timestamp.json like a real one with a few
# hashes (the content does not matter to the server, its size does).
mkdir -p "$W/meta"
python3 - "$W/meta" << 'EOF'
import json, sys, os
d = sys.argv[1]
sig = [{"keyid": "%064x" % i, "sig": "ab" * 64} for i in range(8)]
def write(name, ty, extra):
    signed = {"_type": ty, "spec_version": "1.0.31", "version": 1, "expires": "2030-01-01T00:00:00Z"}
    signed.update(extra)
    open(os.path.join(d, name), "w").write(json.dumps({"signed": signed, "signatures": sig}))
write("1.root.json", "root", {})
write("1.targets.json", "targets", {})
write("1.snapshot.json", "snapshot", {"meta": {"targets.json": {"version": 1}}})
write("timestamp.json", "timestamp", {"meta": {"snapshot.json": {"version": 1, "length": 2048,
      "hashes": {"sha256": "cd" * 32, "sha512": "ef" * 64}}}, "pad": "x" * 700})
EOF

publish() { # $1 base url, $2 data dir
  local tok id
  tok=$(cat "$2/admin-token")
  id=$(curl -sf -X POST -H "Authorization: Bearer $tok" "$1/admin/v1/publications" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  for f in 1.root.json 1.targets.json 1.snapshot.json timestamp.json; do
    curl -sf -X PUT -H "Authorization: Bearer $tok" --data-binary @"$W/meta/$f" "$1/admin/v1/publications/$id/metadata/$f"
  done
  curl -sf -X POST -H "Authorization: Bearer $tok" "$1/admin/v1/publications/$id/commit" > /dev/null
}

# Every server is started first, then they are measured in turn, ROUNDS
# times over (each case's 200 and 304, then the next case, then the first
# again): a machine whose speed drifts during the sitting (other work, the
# CPU's clock) drifts for all of them alike. Each figure printed is the
# median of its rounds, and each round's own ratio and p99 difference are
# printed beside it.
declare -A URL ETAG
CASES=()
etag_of() { curl -sfI "$1" | awk 'tolower($1) == "etag:" {print $2}' | tr -d '\r'; }
check_304() { [ "$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $2" "$1")" = 304 ] || { echo "no 304 from $1" >&2; exit 1; }; }
add_case() { # NAME URL
  URL["$1"]=$2
  ETAG["$1"]=$(etag_of "$2")
  check_304 "$2" "${ETAG["$1"]}"
  CASES+=("$1")
}

start_ota() { # NAME PORT extra-args...
  local name=$1 port=$2
  shift 2
  RUST_LOG=warn "$T/ota-server" --listen "127.0.0.1:$port" --data-dir "$W/$name" "$@" > "$W/$name.log" 2>&1 &
  pids+=($!)
  wait_port "$port"
  publish "http://127.0.0.1:$port" "$W/$name"
  add_case "ota-server, $name" "http://127.0.0.1:$port/metadata/timestamp.json"
}

echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
start_ota sqlite 18181
# The same server with each connection pinned to one of two single-threaded
# runtimes (connection_threads = 2) instead of the work-stealing default:
# what pinning trades (tail against rate).
echo "connection_threads = 2" > "$W/pinned.toml"
start_ota sqlite-2-connection-threads 18185 --config "$W/pinned.toml"

# nginx, the same file the SQLite instance published, from disk.
mkdir -p "$W/nginx"
cat > "$W/nginx/nginx.conf" << EOT
worker_processes auto;
error_log $W/nginx/error.log;
pid $W/nginx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $W/nginx;
  proxy_temp_path $W/nginx; fastcgi_temp_path $W/nginx; uwsgi_temp_path $W/nginx; scgi_temp_path $W/nginx;
  server { listen 127.0.0.1:18184; root $W/sqlite/repository; }
}
EOT
nginx -c "$W/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)
wait_port 18184
add_case nginx http://127.0.0.1:18184/metadata/timestamp.json

if ls -d /usr/lib/postgresql/*/bin > /dev/null 2>&1 && id postgres > /dev/null 2>&1; then
  PGB=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
  mkdir -p "$W/pg"
  chown postgres "$W/pg"
  runuser -u postgres -- "$PGB/initdb" -D "$W/pg/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C > "$W/initdb.log"
  runuser -u postgres -- "$PGB/pg_ctl" -D "$W/pg/data" -o "-k $W/pg -c listen_addresses= -p 5432" -l "$W/pg/log" -w start > /dev/null
  runuser -u postgres -- "$PGB/createdb" -h "$W/pg" ota
  start_ota postgresql 18182 --database-url "postgres://postgres@localhost/ota?host=$W/pg"
else
  echo "(PostgreSQL not installed: no PostgreSQL row)"
fi

S3S=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
if [ -x "$S3S" ]; then
  mkdir -p "$W/s3/ota"
  RUST_LOG=warn "$S3S" --host 127.0.0.1 --port 18190 --access-key AK --secret-key SECRETKEY "$W/s3" > "$W/s3.log" 2>&1 &
  pids+=($!)
  wait_port 18190
  cat > "$W/s3.toml" << EOT
[object_store]
url = "s3://ota/fleet"
endpoint = "http://127.0.0.1:18190"
access_key_id = "AK"
secret_access_key = "SECRETKEY"
allow_http = true
EOT
  start_ota s3 18183 --config "$W/s3.toml"
else
  echo "(s3s-fs not installed, bash .ci/s3: no S3 row)"
fi

# wrk prints p99 as 1.23ms, 456.78us or 1.02s: milliseconds.
ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /[0-9]s$/) n *= 1000; print n }'; }
RESULTS=$W/results.tsv
: > "$RESULTS"
wrk_once() { # CASE ANSWER ROUND
  local out
  if [ "$2" = 304 ]; then
    out=$(wrk -c64 -t2 -d"${DUR}s" --latency -H "If-None-Match: ${ETAG["$1"]}" "${URL["$1"]}")
  else
    out=$(wrk -c64 -t2 -d"${DUR}s" --latency "${URL["$1"]}")
  fi
  grep -q "Non-2xx or 3xx responses" <<< "$out" && { echo "$1: error answers under load" >&2; echo "$out" >&2; exit 1; }
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" \
    "$(awk '/^Requests\/sec/ {print $2}' <<< "$out")" \
    "$(ms "$(awk '$1 == "99%" {print $2}' <<< "$out")")" >> "$RESULTS"
}
# Untimed warm-up: the first seconds after a start (page faults, caches, the
# CPU's clock) would otherwise count against whichever case runs first.
for c in "${CASES[@]}"; do wrk -c64 -t2 -d2s "${URL["$c"]}" > /dev/null; done
ROUNDS=${ROUNDS:-3}
for round in $(seq "$ROUNDS"); do
  for c in "${CASES[@]}"; do
    wrk_once "$c" 200 "$round"
    wrk_once "$c" 304 "$round"
  done
  echo "round $round of $ROUNDS done (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
done

echo
python3 - "$RESULTS" "$ROUNDS" "$DUR" << 'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
rounds, dur = sys.argv[2], sys.argv[3]
by = {}
for case, answer, rnd, rps, p99 in rows:
    by.setdefault((case, answer), {})[int(rnd)] = (float(rps), float(p99))
cases = list(dict.fromkeys(r[0] for r in rows))
print(f"medians of {rounds} interleaved rounds of {dur} s each (wrk -c64 -t2 --latency)")
print(f"{'server':34} {'answer':6} {'requests/s':>11} {'p99 ms':>7} {'ratio':>6} {'p99-nginx':>10}   each round: ratio p99-nginx")
for answer in ("200", "304"):
    ng = by[("nginx", answer)]
    ng_rps = statistics.median(v[0] for v in ng.values())
    ng_p99 = statistics.median(v[1] for v in ng.values())
    for case in ["nginx"] + [c for c in cases if c != "nginx"]:
        got = by[(case, answer)]
        rps = statistics.median(v[0] for v in got.values())
        p99 = statistics.median(v[1] for v in got.values())
        per = ", ".join(f"{got[r][0] / ng[r][0]:.2f} {got[r][1] - ng[r][1]:+.2f}" for r in sorted(got))
        print(f"{case:34} {answer:6} {rps:11.0f} {p99:7.2f} {rps / ng_rps:6.2f} {p99 - ng_p99:+10.2f}   {per}")
EOF
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
