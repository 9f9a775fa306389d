#!/usr/bin/env bash
# Measures `rimg load` and `rimg save` on a ~1 GiB image of several layers
# made from real files, in one run, against:
#   - the floor:  cat archive > file && sync
#   - docker load -i / docker save
#   - skopeo copy docker-archive:ARCHIVE oci:DIR
# and reports each time, its throughput, its ratio to the floor, and the
# peak memory (max RSS from /usr/bin/time -v) of the commands run here.
#
# The archive has the Docker 24-and-older shape with manifest.json last,
# the hardest shape for a streaming reader. It is read from the page cache
# by every contender alike; every writer's output is synced in the time.
#
# Targets (issue 3): load within 1.5x of the floor and faster than docker
# and skopeo; save to /dev/null at least 1 GB/s; peak memory under 64 MiB.
#
# Environment: BENCH_DIR (work dir, default a new dir in /var/tmp),
# BENCH_MIB (image size, default 1024), BENCH_LAYERS (default 6),
# RUNS (runs per measurement, best is kept; default 2), KEEP=1 keeps the
# work dir. Needs python3, GNU tar, /usr/bin/time; docker and skopeo are
# skipped when missing.
set -euo pipefail

cd "$(dirname "$0")/.."
MIB=${BENCH_MIB:-1024}
LAYERS=${BENCH_LAYERS:-6}
RUNS=${RUNS:-2}
WORK=${BENCH_DIR:-$(mktemp -d /var/tmp/rimg-bench.XXXXXX)}
NAME="rimg-bench-$$/app:1"
mkdir -p "$WORK"

have() { command -v "$1" >/dev/null 2>&1; }
HAVE_DOCKER=0; docker info >/dev/null 2>&1 && HAVE_DOCKER=1
HAVE_SKOPEO=0; have skopeo && HAVE_SKOPEO=1

cleanup() {
    if [ "$HAVE_DOCKER" = 1 ]; then docker rmi -f "$NAME" >/dev/null 2>&1 || true; fi
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

echo "building rimg (release)..." >&2
cargo build --release --quiet
RIMG=$PWD/target/release/rimg

# ---------------------------------------------------------------------
# The image: real files from /usr, split into layers of similar size.
ARCHIVE=$WORK/image.tar
if [ ! -f "$ARCHIVE" ]; then
    echo "making a ${MIB} MiB image of $LAYERS layers from /usr..." >&2
    python3 - "$WORK" "$MIB" "$LAYERS" <<'EOF'
import os, sys
work, mib, layers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
budget = mib << 20
per = budget // layers
lists = [[] for _ in range(layers)]
total, n = 0, 0
for top in ("/usr/lib", "/usr/share", "/usr/bin", "/usr/libexec", "/usr/include", "/usr/local"):
    for root, dirs, files in os.walk(top):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if not os.access(p, os.R_OK) and not os.path.islink(p):
                continue
            lists[n].append(p.lstrip("/"))
            total += st.st_size if not os.path.islink(p) else 0
            if total >= per * (n + 1) and n < layers - 1:
                n += 1
            if total >= budget:
                break
        if total >= budget:
            break
    if total >= budget:
        break
for i, l in enumerate(lists):
    with open(f"{work}/list{i}", "w") as fh:
        fh.write("\n".join(l) + "\n")
EOF
    mkdir -p "$WORK/img"
    diff_ids=()
    layer_paths=()
    for i in $(seq 0 $((LAYERS - 1))); do
        mkdir -p "$WORK/img/l$i"
        tar -cf "$WORK/img/l$i/layer.tar" -C / --no-recursion -T "$WORK/list$i" 2>/dev/null || true
        diff_ids+=("\"sha256:$(sha256sum "$WORK/img/l$i/layer.tar" | cut -d' ' -f1)\"")
        layer_paths+=("\"l$i/layer.tar\"")
    done
    ids=$(IFS=,; echo "${diff_ids[*]}")
    paths=$(IFS=,; echo "${layer_paths[*]}")
    printf '{"architecture":"amd64","os":"linux","created":"2026-01-01T00:00:00Z","config":{"Cmd":["/bin/true"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' "$ids" > "$WORK/img/config.json"
    printf '[{"Config":"config.json","RepoTags":["%s"],"Layers":[%s]}]' "$NAME" "$paths" > "$WORK/img/manifest.json"
    # manifest.json last, as Docker 24 and older write it.
    (cd "$WORK/img" && tar -cf "$ARCHIVE" $(for i in $(seq 0 $((LAYERS - 1))); do echo "l$i/layer.tar"; done) config.json manifest.json)
    rm -rf "$WORK/img" "$WORK"/list*
fi
SIZE=$(stat -c %s "$ARCHIVE")
echo "archive: $SIZE bytes, $LAYERS layers" >&2
cat "$ARCHIVE" > /dev/null  # into the page cache, for everyone alike

# ---------------------------------------------------------------------
# measure NAME PREPARE COMMAND: best wall time of RUNS runs, and the max
# RSS of that run. PREPARE runs untimed before each run.
RESULTS=$WORK/results
: > "$RESULTS"
measure() {
    local label=$1 prepare=$2 command=$3 best="" rss=""
    for _ in $(seq "$RUNS"); do
        bash -c "$prepare"
        sync
        local start end secs
        start=$(date +%s.%N)
        /usr/bin/time -v -o "$WORK/time.txt" bash -c "$command" >/dev/null 2>"$WORK/stderr.txt" || {
            echo "$label failed:" >&2; cat "$WORK/stderr.txt" >&2; return 1; }
        end=$(date +%s.%N)
        secs=$(echo "$end - $start" | bc -l)
        local kb
        kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.txt")
        if [ -z "$best" ] || [ "$(echo "$secs < $best" | bc -l)" = 1 ]; then
            best=$secs; rss=$kb
        fi
    done
    printf '%s\t%s\t%s\n' "$label" "$best" "$rss" >> "$RESULTS"
    printf '%-34s %7.2f s\n' "$label" "$best" >&2
}

STORE=$WORK/store
measure "floor: cat > file && sync" "rm -f $WORK/copy.tar" \
    "cat $ARCHIVE > $WORK/copy.tar && sync"
rm -f "$WORK/copy.tar"
measure "rimg load" "rm -rf $STORE" \
    "$RIMG --root $STORE --no-progress load -i $ARCHIVE"
if [ "$HAVE_DOCKER" = 1 ]; then
    measure "docker load" "docker rmi -f $NAME >/dev/null 2>&1 || true" \
        "docker load -i $ARCHIVE"
fi
if [ "$HAVE_SKOPEO" = 1 ]; then
    measure "skopeo copy docker-archive: oci:" "rm -rf $WORK/oci" \
        "skopeo copy -q docker-archive:$ARCHIVE oci:$WORK/oci:app:1"
    rm -rf "$WORK/oci"
fi
measure "rimg save > /dev/null" "true" \
    "$RIMG --root $STORE --no-progress save $NAME > /dev/null"
# /dev/null as stdout lets the kernel skip the copy (sendfile); a pipe
# shows what a consumer on the other end gets.
measure "rimg save | cat > /dev/null" "true" \
    "$RIMG --root $STORE --no-progress save $NAME | cat > /dev/null"
measure "rimg save -o file (synced)" "rm -f $WORK/saved.tar" \
    "$RIMG --root $STORE --no-progress save -o $WORK/saved.tar $NAME"
rm -f "$WORK/saved.tar"
if [ "$HAVE_DOCKER" = 1 ]; then
    measure "docker save > /dev/null" "true" "docker save $NAME > /dev/null"
    measure "docker save | cat > /dev/null" "true" "docker save $NAME | cat > /dev/null"
fi

# ---------------------------------------------------------------------
python3 - "$RESULTS" "$SIZE" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
size = int(sys.argv[2])
t = {r[0]: float(r[1]) for r in rows}
floor = t["floor: cat > file && sync"]
print(f"archive {size / 2**20:.0f} MiB")
print(f"{'':34} {'time':>8} {'MB/s':>8} {'x floor':>8} {'peak RSS':>10}")
for name, secs, kb in rows:
    rss = f"{int(kb) / 1024:.1f} MiB" if kb else "-"
    if name.startswith("docker"):
        rss += " (CLI)"
    print(f"{name:34} {float(secs):7.2f}s {size / float(secs) / 1e6:8.0f} {float(secs) / floor:8.2f} {rss:>10}")
load = t["rimg load"]
print()
print(f"rimg load / floor: {load / floor:.2f} (target <= 1.5)")
for other in ("docker load", "skopeo copy docker-archive: oci:"):
    if other in t:
        print(f"rimg load vs {other}: {t[other] / load:.2f}x faster")
save = t["rimg save > /dev/null"]
print(f"rimg save to /dev/null: {size / save / 1e9:.2f} GB/s (target >= 1)")
piped = t["rimg save | cat > /dev/null"]
print(f"rimg save through a pipe: {size / piped / 1e9:.2f} GB/s")
if "docker save > /dev/null" in t:
    print(f"rimg save vs docker save: {t['docker save > /dev/null'] / save:.2f}x faster")
EOF
