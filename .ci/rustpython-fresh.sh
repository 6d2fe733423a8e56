#!/usr/bin/env bash
# A new project of a user's own that enables the rustpython feature, resolved
# against today's crates.io with the pins of docs/EMBEDDING.md, must still
# compile: this repo's Cargo.lock hides what a newer libc, mio or
# malachite-bigint release does to such a project.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

# The lines of the sh block in docs/EMBEDDING.md under "RustPython: why a
# project pins three crates", run as printed there, so that the two cannot
# drift apart.
pins="$(awk '/^## RustPython: why a project pins/ { on = 1 }
    on && /^ *```sh/ { inblock = 1; next }
    inblock && /^ *```/ { exit }
    inblock { sub(/^ +/, ""); print }' "$repo/docs/EMBEDDING.md")"
if [ -z "$pins" ]; then
    echo "rustpython-fresh: no sh block under \"RustPython: why a project pins\" in docs/EMBEDDING.md" >&2
    exit 1
fi

# check, not build: what the pins prevent are type errors, and without
# codegen a cold run (every crate downloaded, RustPython checked) takes a few
# minutes. The target dir is under the repo's target/ so that a later run
# reuses what did not change; the project itself is thrown away.
export CARGO_TARGET_DIR="$repo/target/rustpython-fresh"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cd "$scratch"
cargo new --quiet --vcs none scratch
cd scratch
cargo add --quiet async_py --path "$repo" --features rustpython
# tokio's full features bring in mio, and with it the newest libc.
cargo add --quiet tokio --features full
while read -r line; do
    echo "+ $line"
    eval "$line"
done <<<"$pins"

# A second malachite-bigint would fail the check below too, in a screen of
# type errors; say it plainly first.
if cargo tree --edges normal --duplicates | grep -q '^malachite-bigint '; then
    echo "rustpython-fresh: two malachite-bigint versions after the pins of docs/EMBEDDING.md" >&2
    exit 1
fi
for crate in libc mio malachite-bigint; do
    cargo tree --edges normal --invert "$crate" --depth 0 --prefix none | awk 'NF && !seen[$0]++'
done
cargo check
echo "rustpython-fresh: a new project with the rustpython feature compiles"
