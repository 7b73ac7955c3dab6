# shellcheck shell=sh
# A fragment of the host script (see lib.sh): what goes live: pending/settled, switch, rollback, activate,
# health.
cv_pending() {
  cv_safe "$1" || cv_die "invalid release id: $1"
  mkdir -p "$P/.convoy" && cv_write "$P/.convoy/pending" "$1"
}
cv_settled() { rm -f "$P/.convoy/pending"; }
cv_rename() {
  if mv --help 2>&1 | grep -q -e '-T'; then mv -T "$1" "$2"; return; fi
  if command -v perl >/dev/null 2>&1; then
    perl -e 'rename($ARGV[0], $ARGV[1]) or die "rename: $!\n"' "$1" "$2"; return
  fi
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import os, sys; os.rename(sys.argv[1], sys.argv[2])' "$1" "$2"; return
  fi
  cv_err "no atomic rename on this host (mv -T, perl or python3 needed)"; return 1
}
cv_repoint() {
  rm -f "$P/current.tmp.$$"
  ln -s "releases/$1" "$P/current.tmp.$$" || return 1
  cv_rename "$P/current.tmp.$$" "$P/current" || { rm -f "$P/current.tmp.$$"; return 1; }
}
cv_switch() {
  cv_safe "$1" || cv_die "invalid release id: $1"
  cv_locked cv_switch_locked "$@"
}
cv_switch_locked() {
  ! cv_gone || return 1
  cv_fence "$2" "$3" || return
  cv_complete "$1" || { cv_err "release $1 is not complete on this host: refusing to switch"; return 1; }
  _scur=$(cv_current)
  if [ "$_scur" = "$1" ]; then cv_say "switch=unchanged release=$1"; return 0; fi
  if [ -n "$_scur" ]; then cv_write "$P/.convoy/previous" "$_scur" || return 1; fi
  cv_repoint "$1" || return 1
  cv_say "switch=done release=$1 previous=$_scur"
}
cv_rollback() { cv_locked cv_rollback_locked "$@"; }
cv_rollback_locked() {
  cv_fence "$1" "$2" || return
  _rp=$(cv_previous)
  [ -n "$_rp" ] || { cv_err "no previous release recorded: nothing to roll back to"; return 1; }
  cv_complete "$_rp" || { cv_err "previous release $_rp is not complete: refusing to roll back"; return 1; }
  _rcur=$(cv_current)
  if [ "$_rcur" = "$_rp" ]; then cv_say "rollback=unchanged release=$_rp"; return 0; fi
  cv_repoint "$_rp" || return 1
  cv_say "rollback=done release=$_rp from=$_rcur"
}
cv_activate() {
  _acur=$(cv_current)
  [ "$_acur" = "$1" ] || cv_die "current is '$_acur', not $1: refusing to activate"
  shift
  cd "$P/current" || return 1
  cv_run "$@"
}
cv_health() {
  cd "$P/current" || return 1
  _hn=0
  while :; do
    _hn=$((_hn + 1))
    if [ "$2" -gt 0 ] && command -v timeout >/dev/null 2>&1; then
      cv_group timeout "$2" sh -c "$1"; _hrc=$?
    else
      cv_group sh -c "$1"; _hrc=$?
    fi
    cv_say "health attempt=$_hn status=$_hrc"
    [ "$_hrc" -ne 0 ] || return 0
    [ "$_hn" -le "$3" ] || return "$_hrc"
    sleep "$4"
  done
}
