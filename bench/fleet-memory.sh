#!/usr/bin/env bash
# The memory the fleet features add to the agent, measured in one run
# against a baseline (root; nothing else should run meanwhile):
#   - baseline: `monitor run` on built-in defaults plus raw events, so
#     records flow to the sinks all the time;
#   - fleet: the same, plus a `nats` sink publishing every record to a
#     JetStream stream on a local nats-server, and `[fleet]` prevalence on
#     the same server.
# Each run learns for 30 s, then a few sensitive reads by new programs raise
# findings (judged by the fleet in the second run), and the agent's resident
# memory is sampled every 2 s for 60 s. Prints the median and highest
# samples, the kernel's peak (VmHWM), what reached the stream, and the
# fleet/baseline ratios.
#
# Usage: bench/fleet-memory.sh [MONITOR]   (default: target/release/monitor)
set -euo pipefail
agent=${1:-target/release/monitor}
nats=/usr/sbin/nats-server
[ -x "$nats" ] || nats=$(command -v nats-server)
work=$(mktemp -d /tmp/monitor-fleet-memory.XXXXXX)
port=$(( 20000 + RANDOM % 20000 ))
cleanup() { [ -n "${server:-}" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

"$nats" -js -sd "$work/js" -a 127.0.0.1 -p "$port" >"$work/nats.log" 2>&1 &
server=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

kib() { awk -v k="$2" '$1 == k { print $2 }' "/proc/$1/status"; }
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

run_once() { # label config -> "median_kib max_kib hwm_kib findings"
    local dir="$work/$1"
    mkdir -p "$dir"
    "$agent" run --config "$2" --state-dir "$dir/state" --api-listen "" \
        --learn-for 30s --min-windows 30 --drain-interval 1s --raw-events \
        >"$dir/out.jsonl" 2>"$dir/err.log" &
    local pid=$!
    for _ in $(seq 600); do grep -q "; detecting" "$dir/err.log" && break; sleep 0.2; done
    grep -q "; detecting" "$dir/err.log" || { echo "the agent did not learn: $(tail -3 "$dir/err.log")" >&2; exit 1; }
    for f in /etc/shadow /etc/gshadow /etc/shadow-; do
        [ -r "$f" ] || continue
        sh -c "cat $f >/dev/null; head -c1 $f >/dev/null" || true
        sleep 1
    done
    : >"$dir/rss"
    for _ in $(seq 30); do kib "$pid" VmRSS: >>"$dir/rss"; sleep 2; done
    local hwm; hwm=$(kib "$pid" VmHWM:)
    kill -TERM "$pid"; wait "$pid" || true
    local findings; findings=$(grep -c '"class_uid":2004' "$dir/out.jsonl" || true)
    echo "$(median <"$dir/rss") $(sort -n "$dir/rss" | tail -1) $hwm $findings"
}

cat >"$work/baseline.toml" <<EOF
[[sink]]
type = "stdout"
EOF
cat >"$work/fleet.toml" <<EOF
[[sink]]
type = "stdout"

[[sink]]
type = "nats"
urls = ["nats://127.0.0.1:$port"]
stream = "MONITOR"

[fleet]
urls = ["nats://127.0.0.1:$port"]
EOF
js_api() { # subject payload -> the JetStream API's JSON reply
    python3 - "$port" "$1" "$2" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.recv(4096)
subject, body = sys.argv[2], sys.argv[3].encode()
s.sendall(b'CONNECT {"verbose":false}\r\nSUB _INBOX.bench 1\r\n'
          + b"PUB %s _INBOX.bench %d\r\n" % (subject.encode(), len(body)) + body + b"\r\n")
reply = b""
while True:
    reply += s.recv(65536)
    head, sep, rest = reply.partition(b"MSG _INBOX.bench 1 ")
    if sep and b"\r\n" in rest:
        size, _, payload = rest.partition(b"\r\n")
        if len(payload) >= int(size):
            print(payload[: int(size)].decode())
            break
PY
}
# The stream the sink publishes into, made as an operator would.
js_api '$JS.API.STREAM.CREATE.MONITOR' \
    '{"name":"MONITOR","subjects":["monitor.>"],"storage":"file","num_replicas":1,"duplicate_window":3600000000000}' >/dev/null
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

echo "fleet memory: $(uname -r), $(nproc) cores; agent $agent; 30 s learning, then 60 s sampled"
read -r b_med b_max b_hwm b_findings < <(run_once baseline "$work/baseline.toml")
echo "  baseline (stdout sink, raw events):       median $(mib "$b_med") MiB, highest $(mib "$b_max") MiB, peak (VmHWM) $(mib "$b_hwm") MiB; $b_findings findings"
read -r f_med f_max f_hwm f_findings < <(run_once fleet "$work/fleet.toml")
echo "  + nats sink publishing, fleet prevalence: median $(mib "$f_med") MiB, highest $(mib "$f_max") MiB, peak (VmHWM) $(mib "$f_hwm") MiB; $f_findings findings"
stored=$(js_api '$JS.API.STREAM.INFO.MONITOR' '' | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"]["messages"])')
emitted=$(grep -c . "$work/fleet/out.jsonl" || true)
judged=$(grep -o '; fleet: [^"\\]*' "$work/fleet/out.jsonl" | head -1 || true)
echo "  records emitted in the fleet run: $emitted; in stream MONITOR: $stored (what the last second before the stop spooled waits in the spool for the next start)"
echo "  a judged finding says \"${judged#; }\""
awk -v bm="$b_med" -v fm="$f_med" -v bh="$b_hwm" -v fh="$f_hwm" 'BEGIN {
    printf "  added: median %+.1f MiB (x%.3f), peak %+.1f MiB (x%.3f)\n", (fm - bm) / 1024, fm / bm, (fh - bh) / 1024, fh / bh }'
grep -E "nats|fleet" "$work/fleet/err.log" | grep -iE "warn|error" | head -5 || true
