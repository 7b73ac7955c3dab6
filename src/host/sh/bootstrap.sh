# shellcheck shell=sh
# The bootstrap of a private script (RemoteCommand::invocation, src/host/mod.rs): runs as
# `sh -c BOOTSTRAP convoy N`, reads the script from the first N bytes of stdin into a 0600
# temporary file and runs it with the rest of stdin (the lifeline); the script removes the
# file first thing (lib.sh), so user environment values never show in `ps`.
umask 077
f=$(mktemp "${TMPDIR:-/tmp}/convoy.XXXXXXXX") || exit 125
if head -c "$1" >"$f"; then CV_SELF=$f CV_LIFELINE=1 exec sh "$f"; fi
rm -f "$f"; exit 125
