#!/usr/bin/env bash
# Benchmark: `rimg import` against `docker import` of the same rootfs
# tarball, in the same run, on this machine.
#
# Builds a ~1 GiB (SIZE_MIB) tarball from real files under /usr, once
# plain and once gzip'd, imports each with both tools, and reports the
# wall-clock times, the ratio and rimg's peak resident memory.
#
#   scripts/bench-import.sh            # SIZE_MIB=1024
#   SIZE_MIB=256 scripts/bench-import.sh
#
# Needs: a release build (made here), GNU tar, gzip, /usr/bin/time
# (package `time`), and the Docker Engine.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-1}
work=$(mktemp -d "${TMPDIR:-/var/tmp}/rimg-import-bench.XXXXXX")
tag="rimg-bench-import:$$"
cleanup() {
  docker rmi -f "$tag" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

for tool in docker /usr/bin/time tar gzip; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (see scripts/setup.sh)" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "the Docker Engine is not reachable" >&2; exit 1; }

cargo build --release --quiet
rimg=$PWD/target/release/rimg

# Regular files from /usr until SIZE_MIB is reached, in a stable order.
echo "building a ${SIZE_MIB} MiB rootfs tarball from /usr ..." >&2
# (find may meet unreadable directories and awk stops early: neither is an
# error here.)
{ find /usr -xdev -type f -readable -printf '%s %p\n' 2>/dev/null || true; } | sort -k2 |
  awk -v limit=$((SIZE_MIB * 1024 * 1024)) '{ total += $1; if (total > limit) exit; print substr($0, index($0, " ") + 1) }' \
  > "$work/files" || true
tar -cf "$work/rootfs.tar" --no-recursion -P --transform 's,^/,,' -T "$work/files" 2>/dev/null
gzip -1 -c "$work/rootfs.tar" > "$work/rootfs.tar.gz"
plain=$(stat -c %s "$work/rootfs.tar")
packed=$(stat -c %s "$work/rootfs.tar.gz")
echo "tarball: $(wc -l < "$work/files") files, $((plain >> 20)) MiB plain, $((packed >> 20)) MiB gzip" >&2

now() { date +%s.%N; }

# Both tools read the tarball from the page cache (it was just written),
# and both write what they import to the same disk.
run_rimg() {
  local input=$1 root="$work/store"
  rm -rf "$root"
  /usr/bin/time -f '%e %M' -o "$work/time.rimg" \
    "$rimg" --root "$root" --no-progress import "$input" bench:1 >/dev/null
  read -r secs kib < "$work/time.rimg"
  echo "$secs $kib"
}

# Docker does not sync what it imports; rimg syncs its layer before it
# reports success. The second figure adds a `sync` after `docker import`,
# for a like-for-like durable import.
run_docker() {
  local input=$1 start end synced
  docker rmi -f "$tag" >/dev/null 2>&1 || true
  sync
  start=$(now)
  docker import "$input" "$tag" >/dev/null
  end=$(now)
  sync
  synced=$(now)
  docker rmi -f "$tag" >/dev/null 2>&1 || true
  echo "$(echo "$end - $start" | bc) $(echo "$synced - $start" | bc)"
}

printf '%-8s %8s %9s %8s %16s %8s %14s\n' input rimg_s docker_s ratio docker+sync_s ratio rimg_peak_MiB
for kind in tar tar.gz; do
  input="$work/rootfs.$kind"
  for _ in $(seq "$RUNS"); do
    sync
    read -r r_secs r_kib < <(run_rimg "$input")
    read -r d_secs ds_secs < <(run_docker "$input")
    ratio=$(echo "scale=2; $d_secs / $r_secs" | bc)
    ratio_synced=$(echo "scale=2; $ds_secs / $r_secs" | bc)
    printf '%-8s %8.2f %9.2f %7sx %16.2f %7sx %14.1f\n' "$kind" "$r_secs" "$d_secs" "$ratio" \
      "$ds_secs" "$ratio_synced" "$(echo "scale=1; $r_kib / 1024" | bc)"
  done
done
echo "(ratio = docker time / rimg time: above 1 means rimg is faster; rimg's time includes syncing its layer)" >&2
