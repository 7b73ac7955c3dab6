# shellcheck shell=sh
# A fragment of the host script (see lib.sh): the host's state as `@@observe ...` lines (src/host/observe.rs
# parses them).
cv_observe() {
  printf '@@observe begin\n'
  printf '@@observe now %s\n' "$(cv_now)"
  _oc=$(cv_current); [ -z "$_oc" ] || printf '@@observe current %s\n' "$_oc"
  _op=$(cv_previous); [ -z "$_op" ] || printf '@@observe previous %s\n' "$_op"
  # shellcheck disable=SC2154 # cv_read assigned _opn (through eval).
  cv_read _opn "$P/.convoy/pending" && cv_safe "$_opn" && printf '@@observe pending %s\n' "$_opn"
  for _ox in "$P"/releases/*; do
    [ -d "$_ox" ] || continue
    _on=${_ox##*/}; cv_safe "$_on" || continue
    cv_read _orv "$_ox/.convoy-revision" || _orv=
    if cv_complete "$_on"; then
      cv_marker "$_on"; [ -z "$M_REV" ] || _orv=$M_REV
      cv_safe "$_orv" || _orv=-
      printf '@@observe release %s complete=1 built_at=%s revision=%s\n' "$_on" "$M_BUILT" "$_orv"
    else
      cv_safe "$_orv" || _orv=-
      printf '@@observe release %s complete=0 revision=%s\n' "$_on" "$_orv"
    fi
  done
  # Only the release convoy asks about, when given: records accumulate over years of deploys.
  if [ -n "${1:-}" ]; then set -- "$P"/.convoy/once/"$1"/*; else set -- "$P"/.convoy/once/*/*; fi
  for _ox in "$@"; do
    [ -d "$_ox" ] || continue
    _os=${_ox##*/}; _or=${_ox%/*}; _or=${_or##*/}
    if ! cv_safe "$_os" || ! cv_safe "$_or"; then continue; fi
    if [ -f "$_ox/done" ]; then
      cv_once_status "$_ox"; printf '@@observe once %s %s state=done status=%s\n' "$_or" "$_os" "$O_STATUS"
    elif cv_alive "$_ox"; then
      printf '@@observe once %s %s state=running\n' "$_or" "$_os"
    elif [ -f "$_ox/started" ]; then
      printf '@@observe once %s %s state=interrupted\n' "$_or" "$_os"
    else
      printf '@@observe once %s %s state=notstarted\n' "$_or" "$_os"
    fi
  done
  cv_lease_read
  if cv_safe "$L_HOLDER"; then
    printf '@@observe lease holder=%s expires=%s generation=%s renewed=%s\n' "$L_HOLDER" "$L_EXPIRES" "$L_GEN" "$L_RENEWED"
  fi
  printf '@@observe end\n'
}
