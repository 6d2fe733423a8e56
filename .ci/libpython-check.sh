#!/usr/bin/env bash
# Builds binaries the way a user of async_py builds them (the rpath of this
# crate's build.rs reaches only its own tests and examples) and checks which
# libpython they embed:
#   plain:  no rpath; run against a copy of pyo3's libpython in another
#           folder, then against the system's libpython if there is one:
#           one warning line on stderr, the run goes on;
#   recipe: the build.rs of docs/EMBEDDING.md, which adds the rpath: pyo3's libpython,
#           no warning;
#   plain against a newer minor version's libpython under this soname:
#           a Startup error naming both versions.
set -euo pipefail
crate="$(cd "$(dirname "$0")/.." && pwd)"
export PYO3_PYTHON="${PYO3_PYTHON:-$(command -v python3)}"
# The crate's own target folder: its dependencies are built there already.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$crate/target}"
unset LD_LIBRARY_PATH

ask_python() { "$PYO3_PYTHON" -c "import sys, sysconfig; print($1)"; }
release="$(ask_python 'sys.version.split()[0]')"
minor="$(ask_python '"%d.%d" % sys.version_info[:2]')"
lib_dir="$(ask_python 'sysconfig.get_config_var("LIBDIR")')"
soname="libpython$minor.so.1.0"
[ -e "$lib_dir/$soname" ] || { echo "no $soname in $lib_dir: pyo3 needs a shared libpython" >&2; exit 1; }
echo "pyo3 builds for CPython $release, $lib_dir/$soname"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# One package per way of building, both in the crate's target folder.
make_package() {
    local name="$1" extra_deps="$2"
    mkdir -p "$scratch/$name/src"
    cp "$crate/Cargo.lock" "$scratch/$name/"
    cat >"$scratch/$name/Cargo.toml" <<EOF
[package]
name = "$name"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
async_py = { path = "$crate", default-features = false, features = ["pyo3"] }
$extra_deps

# As in async_py's own Cargo.toml, so the dependencies built there are reused.
[profile.dev]
debug = "line-tables-only"

[profile.dev.package."*"]
debug = false

[workspace]
EOF
    # Two runners: the check runs once per process, so one warning at most.
    cat >"$scratch/$name/src/main.rs" <<'EOF'
fn main() {
    for _ in 0..2 {
        match async_py::PyRunner::builder().pyo3().build() {
            Ok(runner) => {
                let version = runner.eval_sync("__import__('sys').version.split()[0]");
                println!("running CPython {}", version.unwrap().as_str().unwrap());
            }
            Err(err) => println!("error: {err}"),
        }
    }
}
EOF
    (cd "$scratch/$name" && nice -n 5 cargo build --quiet)
}

make_package plain-embed ""
make_package recipe-embed '# Only so that build.rs gets pyo3'"'"'s configuration.
pyo3 = "0.30"

[build-dependencies]
pyo3-build-config = "0.30"'
cat >"$scratch/recipe-embed/build.rs" <<'EOF'
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
}
EOF
(cd "$scratch/recipe-embed" && nice -n 5 cargo build --quiet)

# Runs a binary; its stdout and stderr end up in $out and $err.
run() {
    local status=0
    env "$@" >"$scratch/out" 2>"$scratch/err" || status=$?
    out="$(cat "$scratch/out")"
    err="$(cat "$scratch/err")"
    return "$status"
}
warnings() { grep -c '^async_py: warning:' <<<"$err" || true; }

plain="$CARGO_TARGET_DIR/debug/plain-embed"
recipe="$CARGO_TARGET_DIR/debug/recipe-embed"

echo "== the plain binary has no rpath"
if ! command -v readelf >/dev/null; then
    echo "skipped: no readelf"
elif readelf -d "$plain" | grep -q 'R.*PATH'; then
    fail "plain-embed has an rpath: $(readelf -d "$plain" | grep 'R.*PATH')"
fi

echo "== plain, against a copy of that libpython in another folder: one warning"
mkdir "$scratch/elsewhere"
cp "$lib_dir/$soname" "$scratch/elsewhere/"
if run LD_LIBRARY_PATH="$scratch/elsewhere" "$plain"; then
    [ "$(warnings)" = 1 ] || fail "expected one warning line, got: $err"
    grep -q "$scratch/elsewhere/$soname" <<<"$err" || fail "the warning does not name the file loaded: $err"
    grep '^async_py: warning:' <<<"$err" || true
    [ "$(grep -c "running CPython $release" <<<"$out")" = 2 ] || fail "both runners should run: $out"
else
    fail "plain-embed failed: $out $err"
fi

echo "== plain, against the system's libpython"
system_lib="$( (ldconfig -p 2>/dev/null || true) | awk -v so="$soname" '$1 == so { print $NF; exit }')"
if [ -z "$system_lib" ]; then
    echo "skipped: the system has no $soname (Debian: apt-get install libpython$minor)"
elif run "$plain"; then
    echo "$out" | head -1
    if [ "$(realpath "$(dirname "$system_lib")")" = "$(realpath "$lib_dir")" ]; then
        [ "$(warnings)" = 0 ] || fail "pyo3's own libpython gave a warning: $err"
    else
        [ "$(warnings)" = 1 ] || fail "expected one warning line for $system_lib, got: $err"
        grep '^async_py: warning:' <<<"$err" || true
    fi
else
    fail "plain-embed failed on $system_lib: $out $err"
fi

echo "== the build.rs of docs/EMBEDDING.md: pyo3's libpython, no warning"
if run "$recipe"; then
    [ "$(warnings)" = 0 ] || fail "the recipe's binary warned: $err"
    [ "$(grep -c "running CPython $release" <<<"$out")" = 2 ] || fail "expected CPython $release twice: $out"
else
    fail "recipe-embed failed: $out $err"
fi

echo "== plain, against a newer minor version under this soname: a Startup error"
# A newer one, as an older libpython lacks symbols the binary needs and the
# loader refuses it before any code runs.
other_lib=""
pyenv_root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
for candidate in $(ls "$pyenv_root"/versions/3.*/lib/libpython3.*.so.1.0 2>/dev/null | sort -V); do
    candidate_minor="$(basename "$candidate" .so.1.0)"
    candidate_minor="${candidate_minor#libpython3.}"
    # 3.7 and older are named libpython3.7m.
    case "$candidate_minor" in *[!0-9]* | '') continue ;; esac
    if [ "$candidate_minor" -gt "${minor#3.}" ]; then
        other_lib="$candidate"
        break
    fi
done
if [ -z "$other_lib" ]; then
    echo "skipped: no libpython newer than $minor under $pyenv_root/versions"
else
    mkdir "$scratch/other"
    ln -s "$other_lib" "$scratch/other/$soname"
    if run LD_LIBRARY_PATH="$scratch/other" "$plain"; then
        [ "$(grep -c '^error: could not start Python: this process loaded CPython' <<<"$out")" = 2 ] ||
            fail "expected a Startup error from both runners with $other_lib: $out $err"
        grep -q "built for CPython $release from" <<<"$out" || fail "the error does not name $release: $out"
        echo "$out" | head -1
    else
        fail "plain-embed did not live on with $other_lib: $out $err"
    fi
fi

if [ "$failures" != 0 ]; then
    echo "libpython check: $failures failed" >&2
    exit 1
fi
echo "libpython check: passed"
