# shellcheck shell=sh
# The files in src/host/sh/ are fragments of ONE script: src/host/script/mod.rs concatenates
# them (lib.sh first) and appends `P=<site path>`, `H=`/`T=` and the operations. A
# variable one file sets and another reads is therefore fine; shellcheck, which reads one
# file at a time, is told so where it happens (SC2034/SC2154, each with its reason).
#
# lib.sh: the start of every script (stdin, umask, the lifeline) and the helpers every
# operation uses. Variables are global in sh, so each function uses its own `_xx` prefix;
# every operation runs in a subshell.
set -u
if [ -n "${CV_SELF:-}" ]; then rm -f -- "$CV_SELF"; unset CV_SELF; fi
# The controller keeps stdin open while it waits for this script (the lifeline): end of
# file there means it is gone (killed, timed out, connection lost) and user commands end.
cv_lifeline=${CV_LIFELINE:-0}; unset CV_LIFELINE
[ "$cv_lifeline" = 1 ] && exec 3<&0
umask 022
# The attempt's lease holder and token: `Script::for_attempt` sets them after this
# preamble, and build.sh, process.sh and lease.sh read them.
# shellcheck disable=SC2034
H='' T=''
GIT_TERMINAL_PROMPT=0; export GIT_TERMINAL_PROMPT
cv_say() { printf '@@convoy %s\n' "$*"; }
cv_err() { printf 'convoy: %s\n' "$*" >&2; }
cv_die() { cv_err "$*"; exit 1; }
cv_with_env() { "$@"; }
cv_exec_env() { exec "$@"; }
# The first line of a file into a variable, without a fork: `cv_read VAR FILE`.
cv_read() { eval "$1="; [ -f "$2" ] || return 1; IFS= read -r "$1" <"$2" 2>/dev/null; return 0; }
# A clock for step timings without a fork: /proc/uptime where the host has it.
# shellcheck disable=SC2034 # cv_idle takes the rest of the line: cv_up is the first field.
cv_tick() { read -r cv_up cv_idle < /proc/uptime 2>/dev/null || cv_up=$(date +%s); }
cv_end() { cv_tick; printf '@@convoy step=%s status=%s t0=%s t1=%s\n' "$1" "$2" "$3" "$cv_up"; [ "$2" -eq 0 ] || exit "$2"; }
cv_now() { date +%s; }
cv_nap() { sleep 0.2 2>/dev/null || sleep 1; }
cv_safe() { case $1 in ''|.|..|-*|*[!A-Za-z0-9._-]*) return 1;; esac; return 0; }
cv_num() { case $1 in ''|*[!0-9]*) return 1;; esac; return 0; }
# A failed write (disk full) leaves no temporary file behind and names the error: dash's
# printf only says "I/O error", so the write is tried once more through cat, which names it.
cv_write() {
  { printf '%s\n' "$2" >"$1.tmp.$$" && mv -f "$1.tmp.$$" "$1"; } 2>/dev/null && return 0
  _we=$(printf '%s\n' "$2" | cat 2>&1 >"$1.tmp.$$") && mv -f "$1.tmp.$$" "$1" 2>/dev/null && return 0
  rm -f "$1.tmp.$$"
  cv_err "failed to write $1: ${_we#cat: }"
  return 1
}
cv_complete() { [ -f "$P/releases/$1/.convoy-complete" ]; }
cv_current() {
  _ct=$(readlink "$P/current" 2>/dev/null) || return 0
  while :; do case $_ct in */) _ct=${_ct%/};; *) break;; esac; done
  case $_ct in releases/*|"$P"/releases/*) ;; *) return 0;; esac
  _ci=${_ct##*/}
  cv_safe "$_ci" || return 0
  [ "$_ct" = "releases/$_ci" ] || [ "$_ct" = "$P/releases/$_ci" ] || return 0
  [ -d "$P/releases/$_ci" ] || return 0
  printf '%s\n' "$_ci"
}
cv_previous() {
  cv_read _pv "$P/.convoy/previous" || _pv=
  cv_safe "$_pv" && printf '%s\n' "$_pv"
  return 0
}
# `cv_marker ID`: M_BUILT and M_REV from the release's completion marker, for callers
# in other files.
# shellcheck disable=SC2034
cv_marker() {
  M_BUILT=; M_REV=
  while IFS= read -r _ml || [ -n "$_ml" ]; do
    case $_ml in built_at=*) M_BUILT=${_ml#built_at=};; revision=*) M_REV=${_ml#revision=};; esac
  done <"$P/releases/$1/.convoy-complete"
  cv_num "$M_BUILT" || M_BUILT=0
  return 0
}
# `cv_gone`: this attempt's controller is gone (its watchdog left the mark): what is left
# of its script may give back and stop, never publish, take a lease or switch.
cv_gone() {
  if [ -n "$T" ] && [ -e "$P/.convoy/gone.$T" ]; then
    cv_err "the controller of this attempt is gone: not acting for it"; return 0
  fi
  return 1
}
# The lease mutex. With flock (util-linux, busybox) it is a kernel lock on .convoy/mutex
# held through fd 8: it ends with its holder however that dies (SIGKILL, or SIGPIPE when
# the controller that sent the script went away), so no dead holder makes the next
# attempt wait. Without flock it is the directory lock.d, broken when 5 s old.
cv_lock() {
  mkdir -p "$P/.convoy" || return 1
  if command -v flock >/dev/null 2>&1; then
    cv_lkfd=1
    exec 8>>"$P/.convoy/mutex"
    # -n in a loop, not -w: busybox and toybox flock know only -sxun.
    _ln=0
    until flock -n 8; do
      _ln=$((_ln + 1))
      [ "$_ln" -lt 150 ] || { cv_unlock; cv_err "lease mutex $P/.convoy/mutex stays busy"; return 1; }
      cv_nap
    done
  else
    cv_lkfd=0
    _lm="$P/.convoy/lock.d"; _ln=0
    while ! mkdir "$_lm" 2>/dev/null; do
      _lt=$(stat -c %Y "$_lm" 2>/dev/null) || _lt=
      if cv_num "$_lt" && [ $(( $(cv_now) - _lt )) -gt 5 ]; then
        cv_err "breaking a stale lease mutex"; rm -rf "$_lm"; continue
      fi
      _ln=$((_ln + 1))
      [ "$_ln" -lt 150 ] || { cv_err "lease mutex $_lm stays busy"; return 1; }
      cv_nap
    done
  fi
  return 0
}
cv_unlock() {
  if [ "${cv_lkfd:-0}" = 1 ]; then exec 8>&-; else rmdir "$P/.convoy/lock.d" 2>/dev/null; fi
  return 0
}
# `cv_locked FN ARGS...`: FN under the lease mutex, released whatever FN returns.
cv_locked() {
  cv_lock || return 1
  "$@"; _lkrc=$?
  cv_unlock
  return "$_lkrc"
}
# The lease file into L_HOLDER, L_EXPIRES, L_GEN, L_ATTEMPT and L_RENEWED (L_ATTEMPT is
# read in build.sh and lease.sh).
# shellcheck disable=SC2034
cv_lease_read() {
  L_HOLDER=; L_EXPIRES=0; L_GEN=0; L_ATTEMPT=; L_RENEWED=0
  [ -f "$P/.convoy/lock" ] || return 0
  cv_read _lr "$P/.convoy/lock" || return 0
  # The lease line splits into its words; set -f: no word is a pattern.
  set -f
  # shellcheck disable=SC2154 # cv_read assigned _lr (through eval).
  for _lw in $_lr; do
    case $_lw in
      holder=*) L_HOLDER=${_lw#holder=};;
      expires=*) L_EXPIRES=${_lw#expires=};;
      generation=*) L_GEN=${_lw#generation=};;
      attempt=*) L_ATTEMPT=${_lw#attempt=};;
      renewed=*) L_RENEWED=${_lw#renewed=};;
    esac
  done
  set +f
  cv_num "$L_EXPIRES" || L_EXPIRES=0
  cv_num "$L_GEN" || L_GEN=0
  cv_num "$L_RENEWED" || L_RENEWED=0
  return 0
}
cv_fence() {
  cv_lease_read
  # The attempt too: a stale attempt of the same holder (a killed run's script still on
  # the host) keeps the generation but lost the lease to the next attempt.
  if [ "$L_HOLDER" != "$1" ] || [ "$L_GEN" != "$2" ] || [ "$L_EXPIRES" -le "$(cv_now)" ] \
      || { [ -n "$T" ] && [ "$L_ATTEMPT" != "$T" ]; }; then
    cv_say "fenced holder=$L_HOLDER generation=$L_GEN expires=$L_EXPIRES"
    cv_err "fenced: the lease is no longer held by $1 generation $2"
    return 75
  fi
  return 0
}
