#!/usr/bin/env bash
# CPU per cache hit over UDP, DoT and DoH: nodedns beside dnsdist, on
# loopback, the server pinned to CPU 1 and dnsperf to CPU 0.
#
#   NODEDNS_BIN=target/release/nodedns benches/load/encrypted.sh
#
# Both servers answer 1,000 names from their cache (warmed first) in front
# of one upstream (a second nodedns answering from `hosts`). CPU is the
# server's utime+stime over the run, divided by the replies dnsperf got.
# Needs dnsperf, dnsdist and openssl. DURATION (default 10) seconds a run;
# DOH_OUTSTANDING (default 1): queries dnsperf keeps outstanding per DoH
# client. dnsperf 2.10's DoH client loses replies at 100 against either
# server; at 10 nodedns answers every one and dnsdist 1.7.3 none, so the
# default compares the two at 1.
set -euo pipefail

BIN="${NODEDNS_BIN:-target/release/nodedns}"
DURATION="${DURATION:-10}"
DOH_OUTSTANDING="${DOH_OUTSTANDING:-1}"
CLIENTS="${CLIENTS:-4}"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$work/key.pem" -out "$work/cert.pem" -days 2 -subj "/CN=bench.test" \
  -addext "subjectAltName=IP:127.0.0.1" 2>/dev/null

{
  echo "    hosts {"
  for i in $(seq 1 1000); do echo "        192.0.2.$((i % 250 + 1)) h$i.bench.test"; done
  echo "        ttl 3600"
  echo "    }"
} >"$work/hosts.part"
for i in $(seq 1 1000); do echo "h$i.bench.test A"; done >"$work/names"

cat >"$work/upstream.Corefile" <<EOF
.:25353 {
    bind 127.0.0.20
$(cat "$work/hosts.part")
}
EOF
taskset -c 0 "$BIN" -conf "$work/upstream.Corefile" --admin off >"$work/upstream.log" 2>&1 &
pids+=($!)

cat >"$work/nodedns.Corefile" <<EOF
.:25354 {
    bind 127.0.0.21
    cache 3600
    forward . 127.0.0.20:25353
}
tls://.:25853 {
    bind 127.0.0.21
    tls $work/cert.pem $work/key.pem
    cache 3600
    forward . 127.0.0.20:25353
}
https://.:25443 {
    bind 127.0.0.21
    tls $work/cert.pem $work/key.pem
    cache 3600
    forward . 127.0.0.20:25353
}
EOF
cat >"$work/dnsdist.conf" <<EOF
setSecurityPollSuffix("")
setLocal("127.0.0.22:25354")
addTLSLocal("127.0.0.22:25853", "$work/cert.pem", "$work/key.pem")
addDOHLocal("127.0.0.22:25443", "$work/cert.pem", "$work/key.pem", "/dns-query")
local s = newServer({ address = "127.0.0.20:25353", checkInterval = 3600 })
s:setUp()
pc = newPacketCache(100000, { maxTTL = 86400 })
getPool(""):setCache(pc)
EOF

wait_port() { # ADDR PORT
  for _ in $(seq 1 100); do
    if dig +time=1 +tries=1 @"$1" -p "$2" h1.bench.test >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "no answer on $1:$2" >&2
  return 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # NAME PID ADDR MODE PORT
  local name=$1 pid=$2 addr=$3 mode=$4 port=$5 q=100
  if [ "$mode" = doh ]; then q=$DOH_OUTSTANDING; fi
  # Warm: every name asked once.
  taskset -c 0 dnsperf -m "$mode" -s "$addr" -p "$port" -d "$work/names" -n 1 -c 1 -q 1 >/dev/null 2>&1 || true
  local before after out completed
  before=$(cpu_ticks "$pid")
  out=$(taskset -c 0 dnsperf -m "$mode" -s "$addr" -p "$port" -d "$work/names" -l "$DURATION" \
    -c "$CLIENTS" -q "$q" 2>&1)
  after=$(cpu_ticks "$pid")
  completed=$(echo "$out" | awk '/Queries completed:/ {print $3}')
  local lost qps
  lost=$(echo "$out" | awk '/Queries lost:/ {print $3}')
  qps=$(echo "$out" | awk '/Queries per second:/ {print $4}')
  local hz
  hz=$(getconf CLK_TCK)
  awk -v n="$name" -v m="$mode" -v t="$((after - before))" -v hz="$hz" -v c="$completed" -v l="$lost" -v q="$qps" \
    'BEGIN { printf "| %s | %s | %.0f | %s | %.2f |\n", n, m, q, l, (t / hz) * 1e6 / c }'
}

taskset -c 1 "$BIN" -conf "$work/nodedns.Corefile" --admin off >"$work/nodedns.log" 2>&1 &
nodedns=$!
pids+=("$nodedns")
taskset -c 1 dnsdist --supervised --disable-syslog -C "$work/dnsdist.conf" >"$work/dnsdist.log" 2>&1 &
dnsdist=$!
pids+=("$dnsdist")
wait_port 127.0.0.20 25353
wait_port 127.0.0.21 25354
wait_port 127.0.0.22 25354

echo "| server | transport | replies/s | lost | CPU µs per reply |"
echo "|---|---|---|---|---|"
for mode in udp dot doh; do
  port=25354
  [ "$mode" = dot ] && port=25853
  [ "$mode" = doh ] && port=25443
  run nodedns "$nodedns" 127.0.0.21 "$mode" "$port"
  run dnsdist "$dnsdist" 127.0.0.22 "$mode" "$port"
done
