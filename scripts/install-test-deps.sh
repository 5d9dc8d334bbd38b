#!/bin/bash
# Install the system tools that ntpkit's interop tests need (Debian 12 / bookworm):
#   chrony, ntpsec-ntpdate (ntpdig + `ntpdate` wrapper), iproute2, tcpdump, gcc, python3
# and unpack (never install) NTPsec's ntpd into ${NTPSEC_ROOT:-/opt/ntpsec}.
#
# * Idempotent and non-interactive; runs as root. Only missing packages are
#   installed, and `apt-get update` runs only when something is missing.
# * The chrony package must never start its service: a running chronyd would
#   discipline this machine's clock. If /usr/sbin/policy-rc.d is absent, a
#   temporary one that exits 101 ("action forbidden") is put in place for the
#   duration of the install and removed afterwards (invoke-rc.d and
#   deb-systemd-invoke honour it). If this script installs chrony on a
#   systemd host, it also disables chrony.service so that it does not start
#   at the next boot.
# * apt-get runs with --no-remove. Installing chrony would otherwise silently
#   remove another time daemon (systemd-timesyncd, ntp, ntpsec: they all conflict
#   on time-daemon). In that case this script fails instead; decide by hand.
# * The ntpsec package conflicts with chrony, so it is only unpacked with
#   `apt-get download ntpsec && dpkg -x`.
# * Afterwards it warns loudly about any running chronyd. This script never
#   starts one, so such a process was started by something else.
set -euo pipefail
exec </dev/null
export DEBIAN_FRONTEND=noninteractive
export APT_LISTCHANGES_FRONTEND=none NEEDRESTART_MODE=l

PACKAGES=(chrony ntpsec-ntpdate iproute2 tcpdump gcc python3)
NTPSEC_ROOT=${NTPSEC_ROOT:-/opt/ntpsec}
NTPD_LIBS=(libbsd0 libcap2 libssl3)   # ntpd's shared-library dependencies (ntpsec Depends)
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
    log "present: $POLICY (not ours; left untouched). It must forbid starts (exit 101) or chrony's service may start."
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

CHRONY_NEW=0
if [ "${#MISSING[@]}" -gt 0 ]; then
  for p in "${MISSING[@]}"; do [ "$p" = chrony ] && CHRONY_NEW=1; done
  install_policy
  apt_update_once
  log "installing: ${MISSING[*]}"
  # --no-remove: abort rather than remove e.g. systemd-timesyncd (conflicts with chrony)
  aptlog=$(mktemp)
  if ! apt-get -q -y --no-install-recommends --no-remove \
       -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
       install "${MISSING[@]}" >"$aptlog" 2>&1; then
    tail -n 30 "$aptlog" >&2; rm -f "$aptlog"
    die "apt-get install ${MISSING[*]} failed. If it wanted to remove a package (e.g. systemd-timesyncd, which conflicts with chrony), decide by hand; this script never removes anything."
  fi
  rm -f "$aptlog"
  for p in "${MISSING[@]}"; do
    is_installed "$p" || die "$p still not installed"
    log "installed: $p $(pkg_version "$p")"
  done
  remove_policy
  if [ "$CHRONY_NEW" = 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    # A fresh chrony is enabled by default and would start (and discipline the clock) at next boot.
    systemctl disable chrony.service >/dev/null 2>&1 || true
    log "disabled chrony.service (installed for tests only; it must not start at boot)"
  fi
fi

# --- NTPsec ntpd, unpacked only -----------------------------------------------
NTPD="$NTPSEC_ROOT/usr/sbin/ntpd"
if [ -x "$NTPD" ]; then
  log "present: $NTPD"
else
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  if id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi   # lets apt download without its "unsandboxed" warning
  if ! (cd "$tmp" && apt-get -q download ntpsec >/dev/null 2>&1); then
    apt_update_once
    (cd "$tmp" && apt-get -q download ntpsec >/dev/null) || { rm -rf "$tmp"; die "apt-get download ntpsec failed"; }
  fi
  deb=$(ls "$tmp"/ntpsec_*.deb)
  mkdir -p "$NTPSEC_ROOT"
  dpkg -x "$deb" "$NTPSEC_ROOT"
  rm -rf "$tmp"
  [ -x "$NTPD" ] || die "unpacked ${deb##*/} but $NTPD is missing"
  log "installed: ${deb##*/} unpacked into $NTPSEC_ROOT (not installed as a package)"
fi
# ntpd needs a few shared libraries; install any that ldd cannot find.
if ldd "$NTPD" 2>/dev/null | grep -q 'not found'; then
  LIBS_MISSING=()
  for p in "${NTPD_LIBS[@]}"; do is_installed "$p" || LIBS_MISSING+=("$p"); done
  if [ "${#LIBS_MISSING[@]}" -gt 0 ]; then
    install_policy
    apt_update_once
    apt-get -q -y --no-install-recommends --no-remove install "${LIBS_MISSING[@]}" >/dev/null
    remove_policy
    log "installed: ${LIBS_MISSING[*]} (ntpd libraries)"
  fi
  if ldd "$NTPD" | grep -q 'not found'; then
    die "$NTPD still misses libraries: $(ldd "$NTPD" | grep 'not found' | tr -s ' \t\n' ' ')"
  fi
fi
log "present: ntpd libraries ($NTPD links)"

# --- sanity: the tools the tests call --------------------------------------------
for t in chronyd chronyc ntpdig ntpdate ip tcpdump gcc setpriv /usr/bin/python3; do
  command -v "$t" >/dev/null || die "$t not found after install"
done
log "present: tools chronyd chronyc ntpdig ntpdate ip tcpdump gcc setpriv /usr/bin/python3"

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
