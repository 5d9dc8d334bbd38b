#!/bin/bash
# Install the system tools that ntpkit's interop tests need (Debian 12 / bookworm), without
# removing or replacing any installed package:
#   ntpsec-ntpdate (ntpdig + `ntpdate` wrapper), iproute2, tcpdump, gcc, python3, make, g++,
#   fonts-dejavu-core (the simulator's plot labels), systemd (systemd-analyze, which checks the
#   unit in dist/; the package is only installed, never made the init system), man-db (`man`,
#   which systemd-analyze verify uses to check the unit's Documentation= pages) (packages that
#   conflict with nothing), and
#   chrony (chronyd, chronyc) and NTPsec's ntpd, *unpacked* from their .debs into
#   ${CHRONY_ROOT:-/opt/chrony} and ${NTPSEC_ROOT:-/opt/ntpsec}: both packages conflict with
#   every other time daemon (a fresh machine ships systemd-timesyncd), so installing them would
#   remove one. Their shared libraries are installed as ordinary packages (they conflict with
#   nothing), and chronyd's system user `_chrony` is created if missing (as the package would).
#
# * Idempotent and non-interactive; runs as root. Only missing pieces are installed, and
#   `apt-get update` runs only when something is missing.
# * No service is ever started: if /usr/sbin/policy-rc.d is absent, a temporary one that exits
#   101 ("action forbidden") is put in place for the duration of an install and removed
#   afterwards. The unpacked chronyd and ntpd have no service at all.
# * apt-get runs with --no-remove: if a package ever wanted to remove another, this script
#   fails instead; it never removes anything.
# * Afterwards it warns loudly about any running chronyd. This script never starts one, so such
#   a process was started by something else.
set -euo pipefail
exec </dev/null
export DEBIAN_FRONTEND=noninteractive
export APT_LISTCHANGES_FRONTEND=none NEEDRESTART_MODE=l

PACKAGES=(ntpsec-ntpdate iproute2 tcpdump gcc g++ make python3 fonts-dejavu-core systemd man-db)
CHRONY_ROOT=${CHRONY_ROOT:-/opt/chrony}
NTPSEC_ROOT=${NTPSEC_ROOT:-/opt/ntpsec}
# Shared libraries of the unpacked binaries (their packages' Depends); none conflicts.
CHRONY_LIBS=(libcap2 libedit2 libgnutls30 libnettle8 libseccomp2)
NTPD_LIBS=(libbsd0 libcap2 libssl3)
POLICY=/usr/sbin/policy-rc.d
POLICY_MARK="ntpkit install-test-deps.sh: temporary policy-rc.d"

log() { printf 'install-test-deps: %s\n' "$*"; }
die() { printf 'install-test-deps: ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
command -v dpkg-query >/dev/null && command -v apt-get >/dev/null || die "needs a Debian-based system (apt-get, dpkg)"

is_installed() {  # is_installed PKG -> 0 if dpkg says "install ok installed"
  [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null || true)" = "ii " ]
}
pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo '?'; }

APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" = 0 ]; then
    log "running apt-get update"
    apt-get -q update >/dev/null
    APT_UPDATED=1
  fi
}

# One run at a time (the temporary policy-rc.d below must not be shared).
LOCKDIR=/run/lock; [ -d "$LOCKDIR" ] && [ -w "$LOCKDIR" ] || LOCKDIR=/tmp
exec 9>"$LOCKDIR/ntpkit-install-test-deps.lock"
flock -w 600 9 || die "another install-test-deps.sh is still running"

# --- temporary policy-rc.d (no service may start during the install) -----------
POLICY_CREATED=0
if grep -qF "$POLICY_MARK" "$POLICY" 2>/dev/null; then
  rm -f "$POLICY"   # left over by an interrupted earlier run (we hold the lock, so not a live one)
  log "removed stale temporary $POLICY from an interrupted earlier run"
fi
remove_policy() {
  if [ "$POLICY_CREATED" = 1 ] && grep -qF "$POLICY_MARK" "$POLICY" 2>/dev/null; then
    rm -f "$POLICY"
    POLICY_CREATED=0
    log "removed temporary $POLICY"
  fi
}
trap remove_policy EXIT
trap 'exit 130' INT TERM HUP   # runs the EXIT trap
install_policy() {
  if [ -e "$POLICY" ]; then
    log "present: $POLICY (not ours; left untouched). It must forbid service starts (exit 101)."
    return
  fi
  printf '#!/bin/sh\n# %s\n# Forbid all service starts while packages are installed.\nexit 101\n' "$POLICY_MARK" > "$POLICY"
  chmod 755 "$POLICY"
  POLICY_CREATED=1
  log "created temporary $POLICY (exit 101) for the duration of the install"
}

# --- Debian packages ----------------------------------------------------------
MISSING=()
for p in "${PACKAGES[@]}"; do
  if is_installed "$p"; then
    log "present: $p $(pkg_version "$p")"
  else
    MISSING+=("$p")
  fi
done

if [ "${#MISSING[@]}" -gt 0 ]; then
  install_policy
  apt_update_once
  log "installing: ${MISSING[*]}"
  # --no-remove: abort rather than remove anything
  aptlog=$(mktemp)
  if ! apt-get -q -y --no-install-recommends --no-remove \
       -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
       install "${MISSING[@]}" >"$aptlog" 2>&1; then
    tail -n 30 "$aptlog" >&2; rm -f "$aptlog"
    die "apt-get install ${MISSING[*]} failed (see above). This script never removes a package; if one had to go, install by hand."
  fi
  rm -f "$aptlog"
  for p in "${MISSING[@]}"; do
    is_installed "$p" || die "$p still not installed"
    log "installed: $p $(pkg_version "$p")"
  done
  remove_policy
fi

# --- chrony and NTPsec's ntpd, unpacked only ------------------------------------
# unpack PKG ROOT BINARY: `apt-get download PKG && dpkg -x` into ROOT unless ROOT/BINARY runs.
unpack() {
  local pkg=$1 root=$2 binary=$2/$3 tmp deb
  if [ -x "$binary" ]; then
    log "present: $binary"
    return
  fi
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  if id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi   # lets apt download without its "unsandboxed" warning
  if ! (cd "$tmp" && apt-get -q download "$pkg" >/dev/null 2>&1); then
    apt_update_once
    (cd "$tmp" && apt-get -q download "$pkg" >/dev/null) || { rm -rf "$tmp"; die "apt-get download $pkg failed"; }
  fi
  deb=$(ls "$tmp"/"${pkg}"_*.deb)
  mkdir -p "$root"
  dpkg -x "$deb" "$root"
  rm -rf "$tmp"
  [ -x "$binary" ] || die "unpacked ${deb##*/} but $binary is missing"
  log "installed: ${deb##*/} unpacked into $root (not installed as a package)"
}

# needs_libs BINARY PKG...: installs those of the packages that are missing if BINARY does not link.
needs_libs() {
  local binary=$1; shift
  if ldd "$binary" 2>/dev/null | grep -q 'not found'; then
    local missing=() p
    for p in "$@"; do is_installed "$p" || missing+=("$p"); done
    if [ "${#missing[@]}" -gt 0 ]; then
      install_policy
      apt_update_once
      apt-get -q -y --no-install-recommends --no-remove install "${missing[@]}" >/dev/null
      remove_policy
      log "installed: ${missing[*]} (libraries of $binary)"
    fi
    if ldd "$binary" | grep -q 'not found'; then
      die "$binary still misses libraries: $(ldd "$binary" | grep 'not found' | tr -s ' \t\n' ' ')"
    fi
  fi
  log "present: libraries of $binary"
}

unpack chrony "$CHRONY_ROOT" usr/sbin/chronyd
needs_libs "$CHRONY_ROOT/usr/sbin/chronyd" "${CHRONY_LIBS[@]}"
needs_libs "$CHRONY_ROOT/usr/bin/chronyc" "${CHRONY_LIBS[@]}"
unpack ntpsec "$NTPSEC_ROOT" usr/sbin/ntpd
needs_libs "$NTPSEC_ROOT/usr/sbin/ntpd" "${NTPD_LIBS[@]}"

# chronyd started as root drops to its compiled-in user `_chrony`, as the package sets it up.
if ! getent passwd _chrony >/dev/null; then
  getent group _chrony >/dev/null || groupadd --system _chrony
  useradd --system --gid _chrony --home-dir /var/lib/chrony --no-create-home \
    --shell /usr/sbin/nologin --comment "Chrony daemon (ntpkit interop tests)" _chrony
  log "created system user _chrony (chronyd drops root to it)"
else
  log "present: user _chrony"
fi

# --- sanity: the tools the tests call --------------------------------------------
TOOLS=("$CHRONY_ROOT/usr/sbin/chronyd" "$CHRONY_ROOT/usr/bin/chronyc" "$NTPSEC_ROOT/usr/sbin/ntpd"
       ntpdig ntpdate ip tcpdump gcc make setpriv /usr/bin/python3 /usr/bin/systemd-analyze man)
for t in "${TOOLS[@]}"; do
  command -v "$t" >/dev/null || die "$t not found after install"
done
"$CHRONY_ROOT/usr/sbin/chronyd" -v >/dev/null || die "$CHRONY_ROOT/usr/sbin/chronyd does not run"
log "present: ${TOOLS[*]}"

# --- no chronyd may be running behind our back ------------------------------------
# This script never starts chronyd, so any running chronyd was started by something else
# (e.g. a package's service, or a test in progress).
PIDS=$(pgrep -x chronyd || true)
if [ -n "$PIDS" ]; then
  echo "install-test-deps: ################################################################" >&2
  echo "install-test-deps: WARNING: chronyd is RUNNING and was not started by this script:" >&2
  for pid in $PIDS; do
    cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)
    capeff=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    if [ -n "$capeff" ] && (( (16#$capeff >> 25) & 1 )); then cap="HAS CAP_SYS_TIME: can change the clock"; else cap="no CAP_SYS_TIME"; fi
    echo "install-test-deps:   pid $pid: $cmd [$cap]" >&2
  done
  echo "install-test-deps: A chronyd without -x/-Q and with CAP_SYS_TIME disciplines this machine's clock." >&2
  echo "install-test-deps: If it is the chrony service: systemctl stop chrony (or kill that PID)." >&2
  echo "install-test-deps: ################################################################" >&2
else
  log "ok: no chronyd running"
fi
log "done"
