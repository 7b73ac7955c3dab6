# shellcheck shell=sh
# The once wrapper: cv_once_start runs it as `sh -c "$CV_ONCE_WRAPPER" convoy-once DIR CMD...`
# in its own session, so the commands outlive the connection. It records its pid, runs the
# commands in order until one fails, then records their end (status, host, time) in DIR/done.
# script/mod.rs puts this file between single quotes (CV_ONCE_WRAPPER=...): it must hold none.
trap "" HUP
O=$1; shift
echo $$ >"$O/pid.tmp" && mv -f "$O/pid.tmp" "$O/pid"
rc=0
for c in "$@"; do sh -ec "$c" </dev/null || { rc=$?; break; }; done
printf "status=%s\nhost=%s\nfinished=%s\n" "$rc" "$(uname -n)" "$(date +%s)" >"$O/done.tmp" && mv -f "$O/done.tmp" "$O/done"
