# shellcheck shell=sh
# A fragment of the host script (see lib.sh): the process groups user commands run in: start, end, sweep,
# stop.
cv_run() {
  for _rc in "$@"; do cv_group sh -ec "$_rc" || return $?; done
  return 0
}
# `cv_watch`: once per script of an attempt, a watchdog reads the lifeline (fd 3): at its
# end of file the controller is gone, and the watchdog ends every process group this
# attempt started (`cv_sweep mine`), so no command outlives the controller that started it
# (an SSH master would otherwise keep a dead controller's session running). It holds no
# output of the script, and the script ends it when it exits.
cv_watch() {
  [ -n "$T" ] || return 0
  cv_wd=
  # shellcheck disable=SC2154 # lib.sh sets cv_lifeline at the top of the script.
  if [ "$cv_lifeline" = 1 ]; then
    (
      while read -r _gx; do :; done
      # First the mark, then the sweep: a group started meanwhile sees one or the other.
      : >"$P/.convoy/gone.$T"
      cv_sweep mine
    ) <&3 >/dev/null 2>&1 &
    cv_wd=$!
  fi
  trap '[ -z "$cv_wd" ] || kill "$cv_wd" 2>/dev/null; cv_forget' EXIT
}
# At the end of the script every group it started has ended: its records go, in one rm.
cv_forget() {
  for _ff in "$P/.convoy/run/$T".*; do
    if [ -f "$_ff" ]; then rm -f "$P/.convoy/run/$T".*; fi
    break
  done
}
# `cv_group CMD...`: runs CMD with the user environment, stdin /dev/null, output to stderr,
# as its own process group recorded in .convoy/run/<attempt>.<pgid> (so the watchdog, a
# later attempt or `stop` can end it). The script drops its records when it exits
# (`cv_forget`), in one rm rather than one per command.
cv_group() {
  [ -d "$P/.convoy/run" ] || mkdir -p "$P/.convoy/run" || return 1
  _gs=0; command -v setsid >/dev/null 2>&1 && _gs=1
  if [ "$_gs" = 1 ]; then
    # cv_exec_env execs in this background subshell: $! is the process that becomes the
    # session and group leader (setsid does not fork when its caller leads no group).
    { CONVOY_ATTEMPT=$T; export CONVOY_ATTEMPT; cv_exec_env setsid "$@"; } </dev/null >&2 3<&- 8>&- &
  else
    { CONVOY_ATTEMPT=$T; export CONVOY_ATTEMPT; cv_exec_env "$@"; } </dev/null >&2 3<&- 8>&- &
  fi
  _gp=$!
  # Not atomic on purpose (no fork for mv): a torn record names no live boot, so it only
  # ever spares a group, never ends a stranger.
  if [ "$_gs" = 1 ]; then cv_boot; printf '%s\n' "$cv_bootid" >"$P/.convoy/run/$T.$_gp"; fi
  if [ -e "$P/.convoy/gone.$T" ]; then
    cv_err "the controller is gone: not running its commands"
    # The pid too: the child may not have become its group's leader yet.
    kill -KILL "$_gp" 2>/dev/null
    if [ "$_gs" = 1 ]; then cv_kill_group "$_gp"; fi
  fi
  wait "$_gp"; _grc=$?
  # Background children the commands left behind belong to the group: they end with it.
  [ "$_gs" = 1 ] && kill -KILL "-$_gp" 2>/dev/null
  return "$_grc"
}
cv_boot() { cv_read cv_bootid /proc/sys/kernel/random/boot_id || cv_bootid=-; [ -n "$cv_bootid" ] || cv_bootid=-; }
# TERM a process group, KILL it if it is still there 2 seconds later.
cv_kill_group() {
  kill -TERM "-$1" 2>/dev/null || return 0
  _kn=0
  while kill -0 "-$1" 2>/dev/null; do
    _kn=$((_kn + 1))
    [ "$_kn" -le 10 ] || { kill -KILL "-$1" 2>/dev/null; break; }
    cv_nap
  done
  return 0
}
# Whether process group $1 is one that attempt $2 started (not a reused pid).
cv_ours() {
  if [ -r "/proc/$1/environ" ]; then
    tr '\000' '\n' <"/proc/$1/environ" 2>/dev/null | grep -qx "CONVOY_ATTEMPT=$2"
    return
  fi
  [ -d "/proc/$1" ] && return 1
  kill -0 "-$1" 2>/dev/null
}
# `cv_sweep [mine]`: end the process groups of other attempts on this site (a controller
# killed or timed out earlier), or with `mine` those of this attempt. Records from before
# a reboot name nothing alive: they are dropped.
cv_sweep() {
  cv_boot
  _wrm=
  for _wf in "$P"/.convoy/run/*; do
    [ -f "$_wf" ] || continue
    _wn=${_wf##*/}; _wt=${_wn%%.*}; _wg=${_wn#*.}
    if cv_num "$_wg" && cv_safe "$_wt"; then
      if [ "${1:-}" = mine ]; then [ "$_wt" = "$T" ] || continue
      else [ "$_wt" != "$T" ] || continue
      fi
      cv_read _wb "$_wf" || _wb=
      if [ "$_wb" = "$cv_bootid" ] && cv_ours "$_wg" "$_wt"; then
        cv_kill_group "$_wg"
        cv_say "stopped=$_wg attempt=$_wt"
      fi
      # Safe words (checked above): one rm for all of them.
      _wrm="$_wrm $_wn"
    else
      rm -f "$_wf"
    fi
  done
  # shellcheck disable=SC2086 # the names are safe words, split on purpose.
  [ -z "$_wrm" ] || (cd "$P/.convoy/run" && rm -f -- $_wrm)
  if [ "${1:-}" != mine ]; then
    for _wf in "$P"/.convoy/gone.*; do
      if [ -f "$_wf" ] && [ "$_wf" != "$P/.convoy/gone.$T" ]; then rm -f "$_wf"; fi
    done
  fi
  return 0
}
cv_stop() { [ -d "$P/.convoy" ] || return 0; cv_sweep mine; }
