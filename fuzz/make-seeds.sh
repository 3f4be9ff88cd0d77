#!/usr/bin/env bash
# Makes the fuzz corpora's seeds from real records and files (run as root,
# after `cargo build --release` and `cargo test --release --no-run`):
# ring-buffer records sampled from the kernel while the test actor does one
# of each security action, a replay stream recorded at the same time, a
# model learned by the agent, spool segments it wrote, the default
# configuration. The seeds are checked in; run this again only when a
# format changes.
set -euo pipefail
cd "$(dirname "$0")/.."
monitor=target/release/monitor
actor=target/release/actor
corpus=fuzz/corpus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$corpus"/{record_decoder,replay_jsonl,config_toml,model_file,spool_segment,state_logs,sink_replies}

# Kernel records, and the same activity as a replay stream.
MONITOR_SAMPLE_RECORDS="$work/records" "$monitor" record --duration 12 --drain-interval 1 \
    -o "$work/recorded.jsonl" 2>/dev/null &
rec=$!
sleep 4
python3 -m http.server 18931 --bind 127.0.0.1 --directory "$work" >/dev/null 2>&1 &
web=$!
sleep 1
"$actor" connect 18931 || true
"$actor" connect6 18931 || true
"$actor" udp 18932 || true
"$actor" write "$work/written" || true
"$actor" read /etc/shadow || true
"$actor" rename "$work/written" "$work/renamed" || true
"$actor" unlink "$work/renamed" || true
"$actor" setuid 65534 || true
"$actor" memfd-exec || true
"$actor" mmap-exec || true
"$actor" bpf-load || true
"$actor" finit-module /dev/null || true
sleep 30 & victim=$!
"$actor" ptrace "$victim" || true
"$actor" kill "$victim" 15 || true
for s in process_vm_readv pidfd_send_signal rt_sigqueueinfo unshare mount umount2 io_uring_setup link symlink; do
    "$actor" syscall "$s" "$work/target" || true
done
sh -c 'id; uname -a' >/dev/null
# A dropped file mapped as code, io_uring opens, and a script run by a
# relative name (a packed exec record with its working directory).
"$actor" drop-and-map "$work/dropped.so" || true
"$actor" io-uring-openat /etc/hostname 3 || true
printf '#!/bin/sh\nexit 0\n' > "$work/job.sh" && chmod 0755 "$work/job.sh"
(cd "$work" && ./job.sh) || true
kill "$web"
wait "$rec" || true
rm -f "$corpus"/record_decoder/kind-*.bin
cp "$work"/records/*.bin "$corpus/record_decoder/"
chmod 0644 "$corpus"/record_decoder/*.bin
# A few dozen lines of every kind, not the whole stream.
python3 - "$work/recorded.jsonl" "$corpus/replay_jsonl/recorded.jsonl" <<'PY'
import json, sys, collections
kept, per = [], collections.Counter()
for line in open(sys.argv[1]):
    kind = json.loads(line).get("kind")
    if per[kind] < 4:
        per[kind] += 1
        kept.append(line)
open(sys.argv[2], "w").writelines(kept)
PY

# A model, spool segments and state logs written by the agent.
timeout -s TERM 40 "$monitor" run --learn-for 20s --min-windows 30 --drain-interval 1s \
    --state-dir "$work/state" --api-listen "" >/dev/null 2>&1 || true
cp "$work/state/model.bin" "$corpus/model_file/learned.bin"
# Its JSON body behind a 1 byte: the target wraps it in a well-formed file.
{ printf '\001'; tail -c +35 "$work/state/model.bin" | gzip -dc; } > "$corpus/model_file/learned.json.seed"
for seg in "$work"/state/spool/*/*.seg; do
    head -c 4096 "$seg" > "$corpus/spool_segment/$(basename "$(dirname "$seg")")-$(basename "$seg")"
done
for log in findings.jsonl acks.jsonl status.json; do
    [ -s "$work/state/$log" ] && head -c 8192 "$work/state/$log" > "$corpus/state_logs/$log"
done

# The default configuration, and one with every sink.
"$monitor" config default > "$corpus/config_toml/default.toml"
cat > "$corpus/config_toml/sinks.toml" <<'TOML'
[agent]
log_max_size = "64MiB"
[[sink]]
type = "syslog"
transport = "tcp"
address = "127.0.0.1:514"
max_message = "8KiB"
[[sink]]
type = "elasticsearch"
url = "https://es:9200"
token_env = "ES"
batch_timeout = "1s"
TOML

# Replies and records the sinks handle.
printf '%s' '{"errors":true,"items":[{"create":{"status":201}},{"create":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"x"}}},{"create":{"status":429}}]}' \
    > "$corpus/sink_replies/bulk.json"
printf '%s' '{"class_uid":2004,"metadata":{"uid":"a"},"unmapped":{"monitor":{"process":{"comm":{"text":"a","base64":"/w=="},"args":["x",{"text":"b","base64":"/w=="}]}}},"message":"0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"}' \
    > "$corpus/sink_replies/record.json"
du -sh "$corpus"/*
