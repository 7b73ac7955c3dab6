# shellcheck shell=sh
# A fragment of the host script (see lib.sh): `once` commands (e.g. migrations): run at most once per release
# and stage, by a wrapper (once_wrapper.sh, in CV_ONCE_WRAPPER) that outlives the
# connection and records their end.
cv_alive() {
  [ -f "$1/pid" ] || return 1
  cv_read _ap "$1/pid" || return 1
  # shellcheck disable=SC2154 # cv_read assigned _ap (through eval).
  cv_num "$_ap" || return 1
  kill -0 "$_ap" 2>/dev/null
}
cv_once_status() {
  O_STATUS=
  while IFS= read -r _sl || [ -n "$_sl" ]; do
    case $_sl in status=*) O_STATUS=${_sl#status=};; esac
  done <"$1/done"
  cv_num "$O_STATUS" || O_STATUS=255
  return 0
}
cv_once() {
  cv_safe "$1" || cv_die "invalid release id: $1"
  cv_safe "$2" || cv_die "invalid stage name: $2"
  _oO="$P/.convoy/once/$1/$2"
  mkdir -p "$_oO" || return 1
  if [ ! -f "$_oO/done" ] && ! cv_alive "$_oO"; then
    cv_locked cv_once_start "$_oO" "$@" || return
  fi
  cv_once_wait "$_oO" "$5"
}
cv_once_start() {
  _sO=$1; _sr=$2; _sh=$4; _sg=$5; shift 6
  if [ -f "$_sO/done" ] || cv_alive "$_sO"; then return 0; fi
  if [ -f "$_sO/started" ]; then
    cv_say "once=interrupted"
    cv_err "the once commands were started ($(cat "$_sO/started")) but their end was never recorded: not running them again; inspect $_sO/log, then remove $_sO to allow a new run"
    return 70
  fi
  cv_fence "$_sh" "$_sg" || return
  cv_complete "$_sr" || { cv_err "release $_sr is not complete: refusing to run once commands"; return 1; }
  rm -f "$_sO/pid" "$_sO/pid.tmp"
  cv_write "$_sO/started" "started=$(cv_now) host=$(uname -n)" || return 1
  cd "$P/releases/$_sr" || return 1
  if command -v setsid >/dev/null 2>&1; then
    # Braces: dash ignores redirections of a backgrounded function call.
    { cv_with_env setsid sh -c "$CV_ONCE_WRAPPER" convoy-once "$_sO" "$@"; } </dev/null >>"$_sO/log" 2>&1 8>&- &
  else
    { cv_with_env nohup sh -c "$CV_ONCE_WRAPPER" convoy-once "$_sO" "$@"; } </dev/null >>"$_sO/log" 2>&1 8>&- &
  fi
  _sn=0
  while [ ! -f "$_sO/pid" ] && [ ! -f "$_sO/done" ]; do
    _sn=$((_sn + 1))
    [ "$_sn" -le 150 ] || { cv_err "the once wrapper did not start"; return 1; }
    cv_nap
  done
  cv_say "once=started"
  return 0
}
cv_once_wait() {
  _wt0=$(cv_now)
  while [ ! -f "$1/done" ]; do
    if ! cv_alive "$1"; then
      [ ! -f "$1/done" ] || break
      cv_say "once=interrupted"
      cv_err "the once wrapper ended without recording a status: not running the commands again; inspect $1/log"
      return 70
    fi
    if [ $(( $(cv_now) - _wt0 )) -ge "$2" ]; then
      cv_say "once=running"; cv_err "gave up waiting for the once commands (still running)"; return 124
    fi
    cv_nap
  done
  cv_once_status "$1"
  cv_say "once=done status=$O_STATUS"
  return "$O_STATUS"
}
