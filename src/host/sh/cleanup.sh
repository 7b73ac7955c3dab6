# shellcheck shell=sh
# A fragment of the host script (see lib.sh): removing the releases the planner chose.
cv_remove_releases() {
  _rp=" $1 "; shift
  _rc=$(cv_current); _rv=$(cv_previous)
  for _ri in "$@"; do
    cv_safe "$_ri" || continue
    case "$_rp" in *" $_ri "*) continue;; esac
    if [ "$_ri" = "$_rc" ] || [ "$_ri" = "$_rv" ]; then continue; fi
    [ ! -e "$P/releases/$_ri" ] || rm -rf "$P/releases/$_ri" || return 1
    cv_say "removed=$_ri"
  done
}
