# shellcheck shell=sh
# A fragment of the host script (see lib.sh): the host lease (P/.convoy/lock): acquire, renew, break, release.
# Each operation reads and writes the lock file under the lease mutex (`cv_locked`).
# `cv_lease_write HOLDER EXPIRES GENERATION NOW`: the lease line of this attempt.
cv_lease_write() {
  cv_write "$P/.convoy/lock" "holder=$1 expires=$2 generation=$3 attempt=$T renewed=$4"
}
cv_lease_acquire() {
  cv_safe "$1" || cv_die "invalid holder: $1"
  cv_num "$2" || cv_die "invalid ttl: $2"
  cv_safe "$T" || cv_die "invalid attempt: $T"
  cv_locked cv_lease_acquire_locked "$@"
}
cv_lease_acquire_locked() {
  ! cv_gone || return 1
  # Under the mutex no writer is active: temporary files are leftovers of a failed write.
  rm -f "$P"/.convoy/lock.tmp.* "$P"/.convoy/previous.tmp.* "$P"/.convoy/pending.tmp.*
  cv_lease_read; _lnow=$(cv_now)
  if [ "$L_HOLDER" = "$1" ]; then _lg=$L_GEN; [ "$_lg" -gt 0 ] || _lg=1
  elif [ -z "$L_HOLDER" ] || [ "$L_EXPIRES" -le "$_lnow" ]; then _lg=$((L_GEN + 1))
  else
    cv_say "lease=held holder=$L_HOLDER expires=$L_EXPIRES generation=$L_GEN"
    return 73
  fi
  _le=$((_lnow + $2))
  cv_lease_write "$1" "$_le" "$_lg" "$_lnow" || return 1
  cv_say "lease=acquired holder=$1 generation=$_lg expires=$_le"
}
# Extends the lease of this attempt; fails (75) if it is not this attempt's any more.
cv_lease_renew() {
  cv_num "$2" || cv_die "invalid ttl: $2"
  cv_locked cv_lease_renew_locked "$@"
}
cv_lease_renew_locked() {
  cv_lease_read; _lnow=$(cv_now)
  if [ "$L_HOLDER" != "$1" ] || [ "$L_ATTEMPT" != "$T" ] || [ "$L_EXPIRES" -le "$_lnow" ]; then
    cv_say "lease=lost holder=$L_HOLDER generation=$L_GEN expires=$L_EXPIRES"
    return 75
  fi
  _le=$((_lnow + $2))
  cv_lease_write "$1" "$_le" "$L_GEN" "$_lnow" || return 1
  cv_say "lease=renewed holder=$1 generation=$L_GEN expires=$_le"
}
# `convoy unlock`: frees the lease whoever holds it, unless its holder renewed it within the
# last $1 seconds (it is alive) and $2 is not `force`. Ends the process groups it started
# (outside the mutex: ending them may take seconds).
cv_lease_break() {
  [ -d "$P/.convoy" ] || { cv_say "lease=free"; return 0; }
  _lbroken=0
  cv_locked cv_lease_break_locked "$@" || return
  [ "$_lbroken" = 1 ] || return 0
  T=-; cv_sweep
  cv_say "lease=broken holder=$L_HOLDER expires=$L_EXPIRES renewed=$L_RENEWED generation=$L_GEN"
}
cv_lease_break_locked() {
  cv_lease_read; _lnow=$(cv_now)
  if [ -z "$L_HOLDER" ] || [ "$L_EXPIRES" -le "$_lnow" ]; then
    cv_say "lease=free holder=$L_HOLDER expires=$L_EXPIRES"; return 0
  fi
  if [ "$2" != force ] && [ $((_lnow - L_RENEWED)) -lt "$1" ]; then
    cv_say "lease=renewing holder=$L_HOLDER expires=$L_EXPIRES renewed=$L_RENEWED generation=$L_GEN"
    return 73
  fi
  cv_write "$P/.convoy/lock" "holder= expires=0 generation=$((L_GEN + 1))" || return 1
  _lbroken=1
}
cv_lease_release() {
  [ -d "$P/.convoy" ] || { cv_say "lease=notheld"; return 0; }
  cv_locked cv_lease_release_locked "$@"
}
cv_lease_release_locked() {
  cv_lease_read
  if [ "$L_HOLDER" = "$1" ] && [ "$L_ATTEMPT" = "$T" ] && [ "$L_EXPIRES" -gt 0 ]; then
    cv_write "$P/.convoy/lock" "holder=$1 expires=0 generation=$L_GEN" || return 1
    cv_say "lease=released generation=$L_GEN"
  else
    cv_say "lease=notheld"
  fi
}
