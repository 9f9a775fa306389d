#!/usr/bin/env bash
# The main job on a real example, on this machine: two image stores, a
# receiver listening on loopback that admits only the sender it trusts,
# and three pushes: a cold one, one that shares a layer, one with nothing
# left to send.
#
#   bash scripts/demo.sh
#
# Installs what it needs (scripts/setup.sh), builds rimg, and works in a
# temporary directory that it removes at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
echo "building rimg (release; the first build takes several minutes)..." >&2
cargo build --release --quiet
rimg="${CARGO_TARGET_DIR:-$PWD/target}/release/rimg"
corpus="$PWD/../shared/corpus/real"

work=$(mktemp -d)
listener=""
cleanup() {
  [ -n "$listener" ] && kill "$listener" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Two nodes: a sender (A) and a receiver (B), each with its own store and
# identity directory.
a() { RIMG_CONFIG="$work/a/config" "$rimg" --root "$work/a/store" "$@"; }
b() { RIMG_CONFIG="$work/b/config" "$rimg" --root "$work/b/store" "$@"; }

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

if [ -f "$corpus/d20-edge.tar" ]; then
  step "rimg load -i d20-edge.tar; rimg load -i d20-busybox.tar   (on A)"
  a load -i "$corpus/d20-edge.tar"
  a load -i "$corpus/d20-busybox.tar"
  first=edge:1 second=bb:1 second_note="the shared layer is skipped"
else
  # No corpus beside this checkout: two images made from this machine's
  # own files (they share no layer).
  echo "(no corpus at $corpus: importing two images from this machine's files instead)"
  step "rimg import base.tar demo-base:1; rimg import top.tar demo-top:1   (on A)"
  tar -C / -cf "$work/base.tar" usr/share/doc
  tar -C / -cf "$work/top.tar" etc 2>/dev/null || true
  a import "$work/base.tar" demo-base:1 >/dev/null
  a import "$work/top.tar" demo-top:1 >/dev/null
  first=demo-base:1 second=demo-top:1 second_note="a second image"
fi
a images

step "rimg id   (on A)  →  rimg trust add --name A FINGERPRINT   (on B)"
fingerprint=$(a id)
echo "$fingerprint"
b trust add --name A "$fingerprint"

# A random loopback port; another one if that is taken.
for _ in 1 2 3 4 5; do
  port=$(( 20000 + RANDOM % 20000 ))
  # Started directly (not through the shell function) so that $! is
  # rimg's own PID and the cleanup stops it.
  RIMG_CONFIG="$work/b/config" "$rimg" --root "$work/b/store" \
    listen --addr "127.0.0.1:$port" --no-progress 2>"$work/listen.log" &
  listener=$!
  for _ in $(seq 50); do
    grep -q "listening on" "$work/listen.log" && break
    kill -0 "$listener" 2>/dev/null || break
    sleep 0.1
  done
  grep -q "listening on" "$work/listen.log" && break
done
step "rimg listen --addr 127.0.0.1:$port   (on B, in the background)"
cat "$work/listen.log"

step "rimg push-peer --accept-new $first 127.0.0.1:$port   (on A)"
a push-peer --accept-new "$first" "127.0.0.1:$port"

step "rimg push-peer $second 127.0.0.1:$port   ($second_note)"
a push-peer "$second" "127.0.0.1:$port"

step "rimg push-peer --json $first 127.0.0.1:$port   (nothing left to send)"
a push-peer --json --no-progress "$first" "127.0.0.1:$port" | tail -n 1

step "rimg images; rimg check   (on B)"
b images
b check

step "what the listener logged"
cat "$work/listen.log"
