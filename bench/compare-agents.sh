#!/usr/bin/env bash
# Compares two builds of the agent in one run, rounds interleaved so that
# drift in the machine's speed spreads over both (root; nothing else should
# run meanwhile):
#   - `monitor run` (learning, every sensor on) over the same workload
#     (10,000 fork+exec of /bin/true, then 50 passes of `find /usr/lib`):
#     the agent's CPU time (user+system, from /proc) and the events it took;
#   - the model and sink benchmarks (`cargo bench` executables of each build),
#     when their paths are given.
# Prints each round and the after/before ratios of the medians.
#
# Usage: bench/compare-agents.sh BEFORE_MONITOR AFTER_MONITOR [ROUNDS]
#        [BEFORE_MODEL_BENCH AFTER_MODEL_BENCH BEFORE_SINKS_BENCH AFTER_SINKS_BENCH]
set -euo pipefail
before=$1 after=$2 rounds=${3:-5}
work=$(mktemp -d /tmp/monitor-compare.XXXXXX)
trap 'rm -rf "$work"' EXIT
hz=$(getconf CLK_TCK)

cpu_ms() { # pid -> utime+stime in ms
    local f; f=$(sed 's/^.*) //' "/proc/$1/stat")
    set -- $f
    echo $(( (${12} + ${13}) * 1000 / hz ))
}

run_once() { # binary label -> "cpu_ms events"
    local bin=$1 dir="$work/$2"
    rm -rf "$dir"; mkdir -p "$dir"
    "$bin" run --state-dir "$dir/state" --api-listen "" --learn-for 1h \
        --profile-window 1s >"$dir/out.jsonl" 2>"$dir/err.log" &
    local pid=$!
    for _ in $(seq 100); do grep -q "running on" "$dir/err.log" && break; sleep 0.1; done
    local start; start=$(cpu_ms "$pid")
    for _ in $(seq 10000); do /bin/true; done
    for _ in $(seq 50); do find /usr/lib >/dev/null 2>&1; done
    sleep 2
    local end; end=$(cpu_ms "$pid")
    kill -TERM "$pid"; wait "$pid" || true
    local events; events=$(sed -n 's/.*stopped; \([0-9]*\) events.*/\1/p' "$dir/err.log")
    echo "$(( end - start )) ${events:-0}"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -a cb ca eb ea
for r in $(seq "$rounds"); do
    if (( r % 2 )); then order="before after"; else order="after before"; fi
    for which in $order; do
        bin=$before; [[ $which == after ]] && bin=$after
        read -r cpu ev < <(run_once "$bin" "$which")
        echo "round $r $which: agent CPU ${cpu} ms, ${ev} events"
        if [[ $which == before ]]; then cb+=("$cpu"); eb+=("$ev"); else ca+=("$cpu"); ea+=("$ev"); fi
    done
done
mb=$(printf '%s\n' "${cb[@]}" | median); ma=$(printf '%s\n' "${ca[@]}" | median)
evb=$(printf '%s\n' "${eb[@]}" | median); eva=$(printf '%s\n' "${ea[@]}" | median)
echo "monitor run, agent CPU per round (median of $rounds): before ${mb} ms (${evb} events), after ${ma} ms (${eva} events), after/before x$(awk -v a="$ma" -v b="$mb" 'BEGIN{printf "%.3f", a/b}')"

if [[ $# -ge 7 ]]; then
    for pair in "model $4 $5" "sinks $6 $7"; do
        set -- $pair
        name=$1
        for which in before after; do
            exe=$2; [[ $which == after ]] && exe=$3
            echo "== $name benchmark, $which build"
            (cd "$(dirname "$0")/../monitor" && MONITOR_ADFA="${MONITOR_ADFA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/datasets/adfa-ld/ADFA-LD}" "$exe" --bench 2>&1 | grep -v '^$' | sed "s/^/$which: /")
        done
    done
fi
