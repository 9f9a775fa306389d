#!/usr/bin/env bash
# Measures `rimg push-peer` against the ssh pipelines a user would type,
# and against the floor (the same bytes written to the receiver's disk and
# synced), in one run: over loopback; from one Docker Engine into a second
# one this script starts (push-peer docker-daemon: --into docker-daemon
# against docker save | zstd | ssh | docker load); then over links this
# script makes with network namespaces, a veth pair and a tbf rate limit.
#
# Needs root (namespaces, sshd, a second dockerd), sshd, zstd, bzip2, jq,
# /usr/bin/time, and for the engine case a running Docker Engine and dockerd.
# Usage: scripts/bench-transfer.sh [--skip-loopback] [--skip-engine] [--skip-links]
# BENCH_SKIP_BZIP2=1 leaves out the bzip2 pipelines (minutes each);
# BENCH_LINKS="100mbit" runs only that link (default "1gbit 100mbit").
# Figures are printed as a table on stdout; ratios are against the floor
# and the pipelines of the same run, never absolute targets.

set -euo pipefail
cd "$(dirname "$0")/.."

SKIP_LOOPBACK="" SKIP_ENGINE="" SKIP_LINKS=""
for arg in "$@"; do
    case $arg in
    --skip-loopback) SKIP_LOOPBACK=1 ;;
    --skip-engine) SKIP_ENGINE=1 ;;
    --skip-links) SKIP_LINKS=1 ;;
    *) echo "unknown argument $arg" >&2; exit 2 ;;
    esac
done
missing=""
for tool in /usr/sbin/sshd ssh ssh-keygen zstd bzip2 jq /usr/bin/time ip tc; do
    command -v "$tool" >/dev/null || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    echo "bench-transfer.sh needs:$missing (scripts/setup.sh installs them)" >&2
    exit 2
fi
[ "$(id -u)" = 0 ] || { echo "bench-transfer.sh needs root (network namespaces, sshd)" >&2; exit 2; }
cargo build --release --quiet --bin rimg --example seed_store
RIMG=$PWD/target/release/rimg
SEED=$PWD/target/release/examples/seed_store

W=$(mktemp -d /var/tmp/rimg-bench.XXXXXX)
SSHD_PID=""
LISTEN_PID=""
ENGINE2_PID=""
cleanup() {
    [ -n "$LISTEN_PID" ] && kill "$LISTEN_PID" 2>/dev/null || true
    [ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null || true
    declare -F stop_engine2 >/dev/null && stop_engine2
    docker rmi -f rimg-bench-e:1 rimg-bench-e:2 >/dev/null 2>&1 || true
    ip netns del rb_a 2>/dev/null || true
    ip netns del rb_b 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

log() { echo "# $*" >&2; }

# --- The image: ~1.3 GiB in two layers, from real files -------------------
log "building the test image in $W"
tar -cf "$W/base.tar" -C / usr/share usr/bin 2>/dev/null || true
# The top layer is an application's share of an image: the first 64 MiB of
# files under /usr/lib (a fixed budget, so that what a warm push has to
# send does not depend on what this machine keeps in some directory: with
# /usr/local it was 15.6% of the image on one machine).
(cd / && find usr/lib -type f -printf '%s %p\n' | LC_ALL=C sort -k2 |
    awk -v max=$((64 << 20)) '{ s += $1; if (s <= max) print $2 }') >"$W/top.list"
tar -cf "$W/top1.tar" -C / -T "$W/top.list" 2>/dev/null || true
mkdir -p "$W/extra" && date +%s%N > "$W/extra/changed"
tar -cf "$W/top2.tar" -C / -T "$W/top.list" -C "$W" extra 2>/dev/null || true
"$SEED" "$W/src" bench:1 "$W/base.tar" "$W/top1.tar" >/dev/null
"$SEED" "$W/src" bench:2 "$W/base.tar" "$W/top2.tar" >/dev/null
TOTAL=$(( $(stat -c %s "$W/base.tar") + $(stat -c %s "$W/top1.tar") ))
TOP=$(stat -c %s "$W/top2.tar")
log "image bench:1 is $TOTAL bytes; the changed top layer of bench:2 is $TOP bytes"

export RIMG_CONFIG_SRC=$W/cfg-src RIMG_CONFIG_DST=$W/cfg-dst
FP=$(RIMG_CONFIG=$W/cfg-src "$RIMG" id)
RIMG_CONFIG=$W/cfg-dst "$RIMG" -q trust add --name bench "$FP"

# --- sshd for the pipelines -----------------------------------------------
mkdir -p /run/sshd "$W/ssh"
ssh-keygen -q -t ed25519 -N "" -f "$W/ssh/host_key"
ssh-keygen -q -t ed25519 -N "" -f "$W/ssh/client_key"
cp "$W/ssh/client_key.pub" "$W/ssh/authorized_keys"
SSH_PORT=22022
cat > "$W/ssh/sshd_config" <<CFG
Port $SSH_PORT
HostKey $W/ssh/host_key
AuthorizedKeysFile $W/ssh/authorized_keys
PidFile $W/ssh/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
PermitRootLogin prohibit-password
CFG

# NS: the prefix to run a command on the receiving side ("" or netns exec).
start_sshd() { # $1 = command prefix
    $1 /usr/sbin/sshd -D -e -f "$W/ssh/sshd_config" 2>/dev/null &
    SSHD_PID=$!
    sleep 0.5
}
stop_sshd() { kill "$SSHD_PID" 2>/dev/null || true; wait "$SSHD_PID" 2>/dev/null || true; SSHD_PID=""; }

start_listener() { # $1 = prefix, $2 = addr
    rm -rf "$W/dst"
    $1 env RIMG_CONFIG="$W/cfg-dst" "$RIMG" --root "$W/dst" --no-progress listen --addr "$2" 2>"$W/listen.log" &
    LISTEN_PID=$!
    for _ in $(seq 100); do grep -q "listening on" "$W/listen.log" && break; sleep 0.05; done
}
stop_listener() { kill "$LISTEN_PID" 2>/dev/null || true; wait "$LISTEN_PID" 2>/dev/null || true; LISTEN_PID=""; }
listener_peak_kib() { awk '/VmHWM/ {print $2}' "/proc/$LISTEN_PID/status"; }

# This machine's disk and shared cores vary from one second to the next by
# as much as the ratios measured: the floor, each push and each
# pipeline but bzip2's are run RUNS times (default 3), and their medians
# compared.
RUNS=${RUNS:-3}
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# Runs "$@" timed; sets SECS and PEAK_KIB (of the command itself).
timed() {
    /usr/bin/time -f "%e %M" -o "$W/time" "$@" >"$W/out" 2>"$W/err" || { cat "$W/err" >&2; return 1; }
    read -r SECS PEAK_KIB <"$W/time"
}

row() { # name seconds bytes [extra]
    local mbs
    mbs=$(awk -v b="$3" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", b / s / 1048576; else print "-" }')
    printf "%-44s %8.2f s %7s MiB/s  %s\n" "$1" "$2" "$mbs" "${4:-}"
}

push() { # prefix addr image
    timed $1 env RIMG_CONFIG="$W/cfg-src" "$RIMG" --root "$W/src" --no-progress \
        push-peer --json --accept-new "$3" "$2"
    tail -1 "$W/out" > "$W/done.json"
}

HAVE_SAVE=0
"$RIMG" save --help >/dev/null 2>&1 && "$RIMG" load --help >/dev/null 2>&1 && HAVE_SAVE=1

# The ssh pipelines: `rimg save | [compress] | ssh host '[decompress] | rimg
# load'`. Without save/load in this build, the stream is the image's blobs
# and the far end writes and syncs a file, which flatters the pipelines.
pipeline() { # label prefix host ssh-extra compress decompress
    local ssh="ssh -p $SSH_PORT -i $W/ssh/client_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR $4"
    local src sink
    if [ $HAVE_SAVE = 1 ]; then
        src="$RIMG --root $W/src save bench:1"
        sink="$RIMG --root $W/pipe-dst -q load"
    else
        src="cat $W/base.tar $W/top1.tar"
        sink="dd of=$W/pipe.out bs=4M conv=fsync status=none"
    fi
    local all="" runs=${7:-$RUNS}
    for _ in $(seq "$runs"); do
        rm -rf "$W/pipe-dst" "$W/pipe.out"
        sync
        timed $2 sh -c "$src | $5 | $ssh root@$3 '$6 | $sink'"
        all="$all $SECS"
    done
    SECS=$(median $all)
    row "$1" "$SECS" "$TOTAL" "median of$all; sender peak $((PEAK_KIB / 1024)) MiB"
}

# The floor, two ways: through the page cache and synced at the end (what
# `cat | dd conv=fsync` does), and with O_DIRECT, as rimg's receiver
# writes. On a virtual machine whose host reclaims the guest's free
# memory, the first is slow whenever the page cache has to grow into memory
# idle for a few seconds (1.1 GB took 0.9 s or 3.4 s system time, depending
# only on that); the faster of the two medians is the floor.
floor() {
    local buffered="" direct=""
    for _ in $(seq "$RUNS"); do
        rm -f "$W/floor.out"
        sync
        timed sh -c "cat $W/base.tar $W/top1.tar | dd of=$W/floor.out bs=4M conv=fsync status=none"
        buffered="$buffered $SECS"
        rm -f "$W/floor.out"
        sync
        timed sh -c "cat $W/base.tar $W/top1.tar | dd of=$W/floor.out bs=4M iflag=fullblock oflag=direct conv=fsync status=none"
        direct="$direct $SECS"
    done
    rm -f "$W/floor.out"
    local b d
    b=$(median $buffered) d=$(median $direct)
    row "floor: cat | dd conv=fsync" "$b" "$TOTAL" "median of$buffered"
    row "floor: cat | dd oflag=direct conv=fsync" "$d" "$TOTAL" "median of$direct"
    FLOOR=$(awk -v a="$b" -v b="$d" 'BEGIN { print (a < b) ? a : b }')
}

scenario() { # title prefix-send prefix-recv host
    local send=$2 recv=$3 host=$4 port=7423
    echo
    echo "== $1 =="
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    floor

    # Each run: a new empty store, a cold push of bench:1, a warm push of
    # bench:2 (its top layer changed), and the same push again with all of
    # it present. The first run reads the source blobs from disk (the
    # caches were dropped), later ones from the page cache: the medians
    # compare like with like.
    local cold="" warm="" present="" peak_send=0 peak_recv=0 r
    for i in $(seq "$RUNS"); do
        [ "$i" = 1 ] || stop_listener
        start_listener "$recv" "$host:$port"
        sync
        push "$send" "$host:$port" bench:1
        cold="$cold $SECS"
        [ "$PEAK_KIB" -gt "$peak_send" ] && peak_send=$PEAK_KIB
        cp "$W/done.json" "$W/cold.json"
        push "$send" "$host:$port" bench:2
        warm="$warm $SECS"
        cp "$W/done.json" "$W/warm.json"
        push "$send" "$host:$port" bench:2
        present="$present $SECS"
        r=$(listener_peak_kib)
        [ "$r" -gt "$peak_recv" ] && peak_recv=$r
    done
    COLD=$(median $cold)
    row "push-peer cold (empty store)" "$COLD" "$TOTAL" \
        "median of$cold; peak sender $((peak_send / 1024)) MiB, receiver $((peak_recv / 1024)) MiB; $(jq -c '{bytes_raw,bytes_wire,blobs_sent}' "$W/cold.json")"
    SECS=$(median $warm)
    row "push-peer warm (top layer changed)" "$SECS" "$TOTAL" \
        "median of$warm; $(awk -v a="$SECS" -v b="$COLD" -v t="$TOP" -v n="$TOTAL" 'BEGIN { printf "%.1f%% of cold (the changed layer is %.1f%% of the bytes)", 100 * a / b, 100 * t / n }'); $(jq -c '{bytes_raw,blobs_sent,blobs_skipped}' "$W/warm.json")"
    SECS=$(median $present)
    row "push-peer all present" "$SECS" "$TOTAL" "median of$present; $(jq -c '{blobs_sent,blobs_skipped}' "$W/done.json")"
    stop_listener
    echo "  cold / floor (the faster one, $FLOOR s): $(awk -v a="$COLD" -v b="$FLOOR" 'BEGIN { printf "%.2f", a / b }')"

    start_sshd "$recv"
    pipeline "ssh (default cipher)" "$send" "$host" "" cat cat
    pipeline "ssh -c aes128-gcm@openssh.com" "$send" "$host" "-c aes128-gcm@openssh.com" cat cat
    pipeline "zstd -T0 | ssh aes128-gcm" "$send" "$host" "-c aes128-gcm@openssh.com" "zstd -T0 -q" "zstd -d -q"
    if [ "${5:-}" != "nobzip2" ] && [ -z "${BENCH_SKIP_BZIP2:-}" ]; then
        pipeline "bzip2 | ssh aes128-gcm" "$send" "$host" "-c aes128-gcm@openssh.com" "bzip2 -c" "bzip2 -d" 1
    fi
    stop_sshd
}

# --- Engine to engine --------------------------------------------------------
# A second engine with its own data root, socket and bridge (dockerd
# --bridge=none would delete the machine's docker0).
E2=/var/tmp/rimg-bench-e2
E2_BRIDGE=rimgbench0
start_engine2() {
    rm -rf "$E2" && mkdir -p "$E2"
    echo '{}' >"$E2/cfg.json"
    ip link add "$E2_BRIDGE" type bridge && ip addr add 10.232.0.1/24 dev "$E2_BRIDGE" &&
        ip link set "$E2_BRIDGE" up
    dockerd --config-file "$E2/cfg.json" --data-root "$E2/root" --exec-root "$E2/exec" \
        --pidfile "$E2/pid" -H "unix://$E2/sock" --bridge="$E2_BRIDGE" \
        --iptables=false --ip6tables=false --storage-driver fuse-overlayfs >"$E2/log" 2>&1 &
    ENGINE2_PID=$!
    for _ in $(seq 300); do docker -H "unix://$E2/sock" info >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "the second engine did not start:" >&2; cat "$E2/log" >&2; return 1
}
stop_engine2() {
    if [ -n "$ENGINE2_PID" ]; then
        kill "$ENGINE2_PID" 2>/dev/null || true
        wait "$ENGINE2_PID" 2>/dev/null || true
        ENGINE2_PID=""
    fi
    ip link del "$E2_BRIDGE" 2>/dev/null || true
    rm -rf "$E2"
}
e2() { docker -H "unix://$E2/sock" "$@"; }
e2_empty() { e2 rmi -f rimg-bench-e:1 rimg-bench-e:2 >/dev/null 2>&1 || true; e2 image prune -af >/dev/null 2>&1 || true; }

engine_pipeline() { # label image compress decompress
    local ssh="ssh -p $SSH_PORT -i $W/ssh/client_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -c aes128-gcm@openssh.com"
    timed sh -c "docker save $2 | $3 | $ssh root@127.0.0.1 '$4 | docker -H unix://$E2/sock load'"
    row "$1" "$SECS" "$TOTAL" "sender peak $((PEAK_KIB / 1024)) MiB"
}

engine_scenario() {
    echo
    echo "== Docker Engine to a second Docker Engine (loopback) =="
    # Both bench images into the first engine, through our own archive.
    "$RIMG" --root "$W/src" save bench:1 bench:2 | docker load -q >/dev/null
    docker tag bench:1 rimg-bench-e:1 && docker tag bench:2 rimg-bench-e:2
    docker rmi bench:1 bench:2 >/dev/null
    start_engine2

    rm -rf "$W/dst"
    $1 env DOCKER_HOST="unix://$E2/sock" RIMG_CONFIG="$W/cfg-dst" "$RIMG" --root "$W/dst" --no-progress \
        listen --into docker-daemon --addr 127.0.0.1:7424 2>"$W/listen.log" &
    LISTEN_PID=$!
    for _ in $(seq 100); do grep -q "listening on" "$W/listen.log" && break; sleep 0.05; done
    sync
    push "" 127.0.0.1:7424 docker-daemon:rimg-bench-e:1
    local cold=$SECS
    row "push-peer docker-daemon: cold" "$SECS" "$TOTAL" \
        "sender peak $((PEAK_KIB / 1024)) MiB; $(jq -c '{bytes_raw,bytes_wire,blobs_sent}' "$W/done.json")"
    # The image is made of bare directory trees (no shell to run), so the
    # check is that the second engine holds the same image ID.
    if [ "$(e2 image inspect -f '{{.Id}}' rimg-bench-e:1)" = "$(docker image inspect -f '{{.Id}}' rimg-bench-e:1)" ]; then
        echo "  (the second engine holds the same image ID)"
    else
        echo "  the second engine's rimg-bench-e:1 differs from the first's" >&2; exit 1
    fi
    push "" 127.0.0.1:7424 docker-daemon:rimg-bench-e:2
    local warm=$SECS
    row "push-peer docker-daemon: warm (top changed)" "$SECS" "$TOTAL" \
        "$(jq -c '{bytes_raw,blobs_sent,blobs_skipped}' "$W/done.json")"
    stop_listener
    # What any reader of the engine pays: the Engine API exports whole images.
    timed sh -c "docker save rimg-bench-e:2 >/dev/null"
    local export_floor=$SECS
    row "docker save rimg-bench-e:2 >/dev/null (export floor)" "$SECS" "$TOTAL" ""

    start_sshd ""
    e2_empty
    engine_pipeline "docker save | zstd -T0 | ssh | docker load: cold" rimg-bench-e:1 "zstd -T0 -q" "zstd -d -q"
    local zcold=$SECS
    engine_pipeline "docker save | zstd -T0 | ssh | docker load: warm" rimg-bench-e:2 "zstd -T0 -q" "zstd -d -q"
    local zwarm=$SECS
    if [ -z "${BENCH_SKIP_BZIP2:-}" ]; then
        e2_empty
        engine_pipeline "docker save | bzip2 | ssh | docker load: cold" rimg-bench-e:1 "bzip2 -c" "bzip2 -d"
        engine_pipeline "docker save | bzip2 | ssh | docker load: warm" rimg-bench-e:2 "bzip2 -c" "bzip2 -d"
    fi
    stop_sshd
    echo "  cold: zstd pipeline / push-peer = $(awk -v a="$zcold" -v b="$cold" 'BEGIN { printf "%.2f", a / b }')x;" \
        "warm: zstd pipeline / push-peer = $(awk -v a="$zwarm" -v b="$warm" 'BEGIN { printf "%.2f", a / b }')x;" \
        "warm push-peer / export floor = $(awk -v a="$warm" -v b="$export_floor" 'BEGIN { printf "%.2f", a / b }')x"
    declare -F stop_engine2 >/dev/null && stop_engine2
    docker rmi rimg-bench-e:1 rimg-bench-e:2 >/dev/null
}

echo "rimg push-peer benchmark, $(date -u +%FT%TZ), $(nproc) cores; image $TOTAL bytes in 2 layers"
[ $HAVE_SAVE = 1 ] || echo "note: this build has no save/load; pipelines stream the layer bytes into a synced file"
[ -n "$SKIP_LOOPBACK" ] || scenario "loopback" "" "" 127.0.0.1
[ -n "$SKIP_ENGINE" ] || engine_scenario ""

[ -n "$SKIP_LINKS" ] && exit 0

link() { # rate
    ip netns del rb_a 2>/dev/null || true
    ip netns del rb_b 2>/dev/null || true
    ip netns add rb_a && ip netns add rb_b
    ip link add rb_va type veth peer name rb_vb
    ip link set rb_va netns rb_a && ip link set rb_vb netns rb_b
    ip -n rb_a addr add 10.77.0.1/24 dev rb_va && ip -n rb_b addr add 10.77.0.2/24 dev rb_vb
    for ns in rb_a rb_b; do ip -n $ns link set lo up; done
    ip -n rb_a link set rb_va up && ip -n rb_b link set rb_vb up
    local burst=$2
    tc -n rb_a qdisc add dev rb_va root tbf rate "$1" burst "$burst" latency 20ms
    tc -n rb_b qdisc add dev rb_vb root tbf rate "$1" burst "$burst" latency 20ms
}

for rate in ${BENCH_LINKS:-1gbit 100mbit}; do
    case $rate in
    1gbit) link 1gbit 1mb && title="1 Gbit/s" ;;
    100mbit) link 100mbit 256kb && title="100 Mbit/s" ;;
    *) echo "BENCH_LINKS: unknown link $rate (1gbit, 100mbit)" >&2; exit 2 ;;
    esac
    scenario "$title (veth + tbf)" "ip netns exec rb_a" "ip netns exec rb_b" 10.77.0.2 nobzip2
done
