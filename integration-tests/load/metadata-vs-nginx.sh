#!/usr/bin/env bash
# The idle poll, ota-server against nginx: `wrk -c64 -t2` on
# metadata/timestamp.json, a 200 (no validator) and a 304 (If-None-Match),
# for ota-server on SQLite, on PostgreSQL and with the repository in an S3
# bucket (s3s-fs), and for nginx serving the very same file from disk, in one
# sitting. Prints requests/s, p99 and the ratio to nginx of each case.
#
#   cargo build --release -p ota-server --bin ota-server
#   bash integration-tests/load/metadata-vs-nginx.sh      # as root; DUR=10 by default
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

declare -A RPS P99
# wrk_case NAME URL [ETAG]: 200 without a validator, 304 with If-None-Match.
wrk_case() {
  local name=$1 url=$2 etag=$3 out
  # Untimed warm-up: the first seconds after a start (page faults, caches,
  # the CPU's clock) would otherwise count against whichever case runs first.
  wrk -c64 -t2 -d2s "$url" > /dev/null
  out=$(wrk -c64 -t2 -d"${DUR}s" --latency "$url")
  RPS["$name 200"]=$(awk '/^Requests\/sec/ {print $2}' <<< "$out")
  P99["$name 200"]=$(awk '$1 == "99%" {print $2}' <<< "$out")
  out=$(wrk -c64 -t2 -d"${DUR}s" --latency -H "If-None-Match: $etag" "$url")
  grep -q "Non-2xx or 3xx responses" <<< "$out" && { echo "$name: error answers under load" >&2; echo "$out" >&2; exit 1; }
  RPS["$name 304"]=$(awk '/^Requests\/sec/ {print $2}' <<< "$out")
  P99["$name 304"]=$(awk '$1 == "99%" {print $2}' <<< "$out")
}
etag_of() { curl -sfI "$1" | awk 'tolower($1) == "etag:" {print $2}' | tr -d '\r'; }
check_304() { [ "$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $2" "$1")" = 304 ] || { echo "no 304 from $1" >&2; exit 1; }; }

run_ota() { # NAME PORT extra-args...
  local name=$1 port=$2
  shift 2
  RUST_LOG=warn "$T/ota-server" --listen "127.0.0.1:$port" --data-dir "$W/$name" "$@" > "$W/$name.log" 2>&1 &
  pids+=($!)
  local pid=$!
  wait_port "$port"
  publish "http://127.0.0.1:$port" "$W/$name"
  local url="http://127.0.0.1:$port/metadata/timestamp.json" etag
  etag=$(etag_of "$url")
  check_304 "$url" "$etag"
  wrk_case "ota-server, $name" "$url" "$etag"
  kill "$pid"
}

CASES=()
echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
run_ota sqlite 18181
CASES+=("ota-server, sqlite")
# The same server with each connection pinned to one of two single-threaded
# runtimes (connection_threads = 2) instead of the work-stealing default:
# what pinning trades (tail against rate).
echo "connection_threads = 2" > "$W/pinned.toml"
run_ota sqlite-2-connection-threads 18185 --config "$W/pinned.toml"
CASES+=("ota-server, sqlite-2-connection-threads")

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
NGINX=$!
wait_port 18184
url=http://127.0.0.1:18184/metadata/timestamp.json
etag=$(etag_of "$url")
check_304 "$url" "$etag"
wrk_case nginx "$url" "$etag"
kill "$NGINX"

if ls -d /usr/lib/postgresql/*/bin > /dev/null 2>&1 && id postgres > /dev/null 2>&1; then
  PGB=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
  mkdir -p "$W/pg"
  chown postgres "$W/pg"
  runuser -u postgres -- "$PGB/initdb" -D "$W/pg/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C > "$W/initdb.log"
  runuser -u postgres -- "$PGB/pg_ctl" -D "$W/pg/data" -o "-k $W/pg -c listen_addresses= -p 5432" -l "$W/pg/log" -w start > /dev/null
  runuser -u postgres -- "$PGB/createdb" -h "$W/pg" ota
  run_ota postgresql 18182 --database-url "postgres://postgres@localhost/ota?host=$W/pg"
  CASES+=("ota-server, postgresql")
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
  run_ota s3 18183 --config "$W/s3.toml"
  CASES+=("ota-server, s3")
else
  echo "(s3s-fs not installed, bash .ci/s3: no S3 row)"
fi

echo
# wrk prints p99 as 1.23ms, 456.78us or 1.02s.
ms() { python3 -c "
import re,sys; m=re.fullmatch(r'([0-9.]+)(us|ms|s)', sys.argv[1]); v=float(m[1])
print(v/1000 if m[2]=='us' else v*1000 if m[2]=='s' else v)" "$1"; }
printf '%-34s %-5s %12s %10s %14s %12s\n' server answer "requests/s" p99 "ratio to nginx" "p99 - nginx"
for answer in 200 304; do
  printf '%-34s %-5s %12s %10s %14s %12s\n' nginx "$answer" "${RPS["nginx $answer"]}" "${P99["nginx $answer"]}" "1.00" "0"
  nginx_p99=$(ms "${P99["nginx $answer"]}")
  for c in "${CASES[@]}"; do
    ratio=$(python3 -c "print(f'{${RPS["$c $answer"]} / ${RPS["nginx $answer"]}:.2f}')")
    dp99=$(python3 -c "print(f'{$(ms "${P99["$c $answer"]}") - $nginx_p99:+.2f}ms')")
    printf '%-34s %-5s %12s %10s %14s %12s\n' "$c" "$answer" "${RPS["$c $answer"]}" "${P99["$c $answer"]}" "$ratio" "$dp99"
  done
done
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
