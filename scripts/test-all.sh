#!/bin/bash
# The whole test suite of ntpkit, for a fresh Debian 12 machine with a Rust toolchain, run as
# root (the interop tests need network namespaces):
#
#   1. scripts/install-test-deps.sh (idempotent: chrony, ntpsec-ntpdate, iproute2, NTPsec ntpd)
#   2. cargo fmt --all --check
#   3. cargo clippy --workspace --all-targets -- -D warnings, and the API docs built with
#      warnings as errors (broken or private links)
#   4. cargo test --workspace (unit, property, integration and interop tests; the dev profile
#      is optimised, see Cargo.toml, and a release build would take minutes longer). Benchmarks
#      are not run; step 3 already type-checks them (--all-targets).
#   5. every examples/*.toml and dist/ntpkit.toml (the config installed with the systemd unit)
#      through `ntpkit daemon --check --config F`, and every scenarios/*.toml through
#      `ntpkit simulate --check F`
#   6. the unmodified daemon binary in clknetsim against chronyd, a few seeds of a few models
#      (scripts/clknetsim-compare.py --quick): fails if ntpkit crashes there, does not
#      synchronize, or loses a cell it wins
#   7. no test namespace or process left behind
#
# Around all of it, the kernel clock state is recorded and compared at the end
# (scripts/clockstate.py, read-only): the run fails if anything changed the clock.
#
# Non-interactive (stdin is /dev/null; fine with CI=true). Without root it fails, unless
# NTPKIT_SKIP_INTEROP=1: then the dependency install is skipped and the interop tests report
# as ignored (crates/ntpkit/build.rs).
set -euo pipefail
exec </dev/null
cd "$(dirname "$0")/.."
ROOT=$(pwd)

START=$(date +%s)
step() { printf '\n=== test-all [%4d s]: %s\n' $(( $(date +%s) - START )) "$*"; }
die() { printf 'test-all: FAILED: %s\n' "$*" >&2; exit 1; }

CLOCK=$(mktemp /tmp/ntpkit-clockstate.XXXXXX)
finish() {
  rc=$?
  trap - EXIT
  step "kernel clock state (read-only comparison with the start)"
  if ! /usr/bin/python3 "$ROOT/scripts/clockstate.py" check "$CLOCK"; then
    rc=1
  fi
  rm -f "$CLOCK"
  if [ "$rc" = 0 ]; then
    printf '\ntest-all: PASSED in %d s\n' $(( $(date +%s) - START ))
  else
    printf '\ntest-all: FAILED (exit %d) after %d s\n' "$rc" $(( $(date +%s) - START )) >&2
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM HUP

command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup) first"
[ -x /usr/bin/python3 ] || die "/usr/bin/python3 not found (apt-get install python3)"
/usr/bin/python3 scripts/clockstate.py save "$CLOCK"

if [ "$(id -u)" = 0 ]; then
  step "install test dependencies"
  bash scripts/install-test-deps.sh
elif [ "${NTPKIT_SKIP_INTEROP:-}" = 1 ]; then
  echo "test-all: *** not root: NOT installing test dependencies; interop tests will be SKIPPED (NTPKIT_SKIP_INTEROP=1) ***"
else
  die "must run as root (interop tests use network namespaces); or set NTPKIT_SKIP_INTEROP=1 to skip them"
fi

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo doc --workspace --no-deps (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

step "cargo test --workspace"
cargo test --workspace

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
NTPKIT="$TARGET/debug/ntpkit"
[ -x "$NTPKIT" ] || die "$NTPKIT was not built"
shopt -s nullglob
configs=(examples/*.toml dist/ntpkit.toml)
scenarios=(scenarios/*.toml)
step "validate ${#configs[@]} config(s) and ${#scenarios[@]} scenario(s) with the binary"
# The production configs keep their drift file in /var/lib/ntpkit and their control socket in
# /run/ntpkit, the state and runtime directories that an installation (the systemd unit's
# StateDirectory= and RuntimeDirectory=) creates; --check rightly rejects a directory that does
# not exist, so they are created here as an installation would (root), or the paths are pointed
# at a scratch directory.
STATE=/var/lib/ntpkit
RUNTIME=/run/ntpkit
if [ "$(id -u)" = 0 ]; then
  for d in "$STATE" "$RUNTIME"; do
    if [ ! -d "$d" ]; then
      install -d -m 0755 "$d"
      echo "created $d (as an installation makes it)"
    fi
  done
fi
SCRATCH=$(mktemp -d /tmp/ntpkit-examples.XXXXXX)
for f in "${configs[@]}"; do
  checked=$f
  if [ ! -d "$STATE" ] || [ ! -d "$RUNTIME" ]; then
    checked="$SCRATCH/$(basename "$f")"
    sed -e "s#$STATE#$SCRATCH#g" -e "s#$RUNTIME#$SCRATCH#g" "$f" >"$checked"
  fi
  "$NTPKIT" daemon --check --config "$checked" || die "config $f does not validate"
  echo "ok: $f"
done
rm -rf "$SCRATCH"
for f in "${scenarios[@]}"; do
  "$NTPKIT" simulate --check "$f" || die "scenario $f does not validate"
  echo "ok: $f"
done

if [ "$(id -u)" = 0 ]; then
  step "clknetsim: ntpkit and chronyd in the same simulator (quick subset)"
  /usr/bin/python3 scripts/clknetsim-compare.py --quick --ntpkit "$NTPKIT"
else
  echo "test-all: *** not root: clknetsim comparison SKIPPED (it runs the simulated daemons as an unprivileged user) ***"
fi

step "nothing left behind"
left=$(ip netns list 2>/dev/null | grep -o '^ntpkit-it-[^ ]*' || true)
[ -z "$left" ] || die "test network namespaces left behind: $left"
# Test processes carry the namespace / work-directory prefix or are our server binary.
procs=$(pgrep -a -f "ntpkit-it-|ntpkit-clknetsim-|$NTPKIT serve" || true)
[ -z "$procs" ] || die "test processes left behind: $procs"
echo "ok: no test namespaces or servers left"
