# shellcheck shell=sh
# A fragment of the host script (see lib.sh): a release from nothing to published: prepare, fetch or unpack,
# link shared entries, build, publish.
cv_prepare() {
  cv_safe "$1" || cv_die "invalid release id: $1"
  mkdir -p "$P/releases" "$P/shared" "$P/.convoy" || return 1
  # Nothing of an abandoned attempt may run while its leftovers are removed.
  cv_sweep
  for _px in "$P"/releases/.?*; do
    if [ ! -d "$_px" ] || [ -L "$_px" ]; then continue; fi
    _pn=${_px##*/}
    case $_pn in ..) continue;; esac
    [ "$_pn" != ".$1.$T" ] || continue
    rm -rf "$_px" || return 1
    cv_say "removed=${_pn#.} reason=abandoned"
  done
  if [ -e "$P/releases/$1" ] || [ -L "$P/releases/$1" ]; then
    if [ -L "$P/releases/$1" ] || ! cv_complete "$1"; then
      cv_say "removed=$1 reason=incomplete"
      rm -rf "$P/releases/$1" || return 1
    fi
  fi
  for _px in "$P"/current.tmp.* "$P"/.convoy/previous.tmp.* "$P"/.convoy/mirror.git.tmp.* \
      "$P"/.convoy/archive.tmp.* "$P"/.convoy/upload.tmp.* "$P"/.convoy/cleanup.tmp.*; do
    if [ -e "$_px" ] || [ -L "$_px" ]; then rm -rf "$_px" || return 1; fi
  done
  return 0
}
cv_fetch_git() {
  cv_safe "$1" || cv_die "invalid release id: $1"
  _fd="$P/releases/.$1.$T"; _fm="$P/.convoy/mirror.git"; _fr=$3
  case $_fr in ''|-*) cv_die "invalid revision: $_fr";; esac
  if cv_complete "$1"; then
    cv_marker "$1"; cv_say "revision=$M_REV"; cv_say "fetch=skipped release=$1"; return 0
  fi
  command -v git >/dev/null 2>&1 || cv_die "git is not installed on this host"
  mkdir -p "$P/releases" "$P/.convoy" || return 1
  if [ ! -d "$_fm" ]; then
    rm -rf "$_fm.tmp.$$"
    git clone --quiet --mirror -- "$2" "$_fm.tmp.$$" >&2 || { rm -rf "$_fm.tmp.$$"; return 1; }
    mv "$_fm.tmp.$$" "$_fm" || return 1
  elif [ "$(git --git-dir="$_fm" config --get remote.origin.url)" != "$2" ]; then
    git --git-dir="$_fm" remote set-url origin "$2" >&2 || return 1
  fi
  _fs=
  case $_fr in
    *[!0-9a-f]*) ;;
    ???????*) _fs=$(git --git-dir="$_fm" rev-parse --verify --quiet "$_fr^{commit}" 2>/dev/null) || _fs=;;
  esac
  if [ -z "$_fs" ]; then
    git --git-dir="$_fm" fetch --quiet --prune origin >&2 || return 1
    _fs=$(git --git-dir="$_fm" rev-parse --verify --quiet "$_fr^{commit}" 2>/dev/null) || _fs=
  fi
  if [ -z "$_fs" ]; then
    if git --git-dir="$_fm" fetch --quiet origin "$_fr" >&2 2>/dev/null; then
      _fs=$(git --git-dir="$_fm" rev-parse --verify --quiet "FETCH_HEAD^{commit}" 2>/dev/null) || _fs=
    fi
  fi
  [ -n "$_fs" ] || cv_die "revision $_fr not found in $2"
  rm -rf "$_fd" || return 1
  mkdir -p "$_fd" || return 1
  _fa="$P/.convoy/archive.tmp.$$.tar"
  git --git-dir="$_fm" archive --format=tar -o "$_fa" "$_fs" || { rm -f "$_fa"; return 1; }
  (cd "$_fd" && tar -xf "$_fa"); _frc=$?
  rm -f "$_fa"
  [ "$_frc" -eq 0 ] || return "$_frc"
  cv_write "$_fd/.convoy-revision" "$_fs" || return 1
  cv_say "revision=$_fs"
}
cv_unpack() {
  cv_safe "$1" || cv_die "invalid release id: $1"
  _ud="$P/releases/.$1.$T"
  cv_num "$2" || cv_die "invalid archive size: $2"
  if cv_complete "$1"; then head -c "$2" >/dev/null; cv_say "unpack=skipped release=$1"; return 0; fi
  mkdir -p "$P/releases" "$P/.convoy" || return 1
  _ua="$P/.convoy/upload.tmp.$$"
  # Exactly the archive's bytes: stdin stays open after it (the lifeline).
  head -c "$2" >"$_ua.gz" || { rm -f "$_ua.gz"; return 1; }
  [ -s "$_ua.gz" ] || { rm -f "$_ua.gz"; cv_die "no archive on stdin"; }
  gzip -dc <"$_ua.gz" >"$_ua.tar"; _urc=$?
  rm -f "$_ua.gz"
  [ "$_urc" -eq 0 ] || { rm -f "$_ua.tar"; cv_die "the archive is not a valid .tar.gz"; }
  if ! rm -rf "$_ud" || ! mkdir -p "$_ud"; then rm -f "$_ua.tar"; return 1; fi
  (cd "$_ud" && tar -xf "$_ua.tar"); _urc=$?
  rm -f "$_ua.tar"
  return "$_urc"
}
cv_link_shared() {
  cv_safe "$1" || cv_die "invalid release id: $1"
  _lid=$1; shift
  # Entries are checked even when there is nothing to do: a bad one is always an error.
  for _le in "$@"; do
    _lnm=$_le
    while :; do case $_lnm in */) _lnm=${_lnm%/};; *) break;; esac; done
    case $_lnm in ''|/*|.|..|./*|../*|*/.|*/..|*/./*|*/../*) cv_die "invalid shared entry: $_le";; esac
  done
  cv_complete "$_lid" && return 0
  _ld="$P/releases/.$_lid.$T"
  if [ ! -d "$_ld" ] || [ -L "$_ld" ]; then cv_die "release dir $_ld does not exist"; fi
  for _le in "$@"; do
    case $_le in */) _lk='dir';; *) _lk='file';; esac
    _lnm=$_le
    while :; do case $_lnm in */) _lnm=${_lnm%/};; *) break;; esac; done
    case $_lnm in ''|/*|.|..|./*|../*|*/.|*/..|*/./*|*/../*) cv_die "invalid shared entry: $_le";; esac
    _ls="$P/shared/$_lnm"; _lr="$_ld/$_lnm"
    # Every parent must be a real directory inside the release and inside shared/: a
    # symlink on the way (config -> /etc) would move or expose files outside the site.
    cv_inside "$_ld" "$_lnm" || cv_die "shared entry $_le: ${CV_LINK#"$_ld"/} is a symlink in the release: refusing to follow it out of the release"
    cv_inside "$P/shared" "$_lnm" || cv_die "shared entry $_le: ${CV_LINK#"$P"/} is a symlink: refusing to follow it out of $P/shared"
    mkdir -p "${_ls%/*}" "${_lr%/*}" || return 1
    if [ ! -e "$_ls" ] && [ ! -L "$_ls" ]; then
      if [ "$_lk" = dir ] && [ -d "$_lr" ] && [ ! -L "$_lr" ]; then mv "$_lr" "$_ls" || return 1
      elif [ "$_lk" = file ] && [ -f "$_lr" ] && [ ! -L "$_lr" ]; then mv "$_lr" "$_ls" || return 1
      elif [ "$_lk" = dir ]; then mkdir -p "$_ls" || return 1
      else : >"$_ls" || return 1
      fi
    fi
    if [ -L "$_lr" ] && [ "$(readlink "$_lr")" = "$_ls" ]; then continue; fi
    rm -rf "$_lr" || return 1
    ln -s "$_ls" "$_lr" || return 1
  done
  return 0
}
# `cv_inside BASE REL`: no parent of REL below BASE is a symlink (sets CV_LINK to the first).
cv_inside() {
  _ib=$1; _ir=${2%/*}
  [ "$_ir" != "$2" ] || return 0
  set -f; _iifs=$IFS; IFS=/
  for _ip in $_ir; do
    _ib="$_ib/$_ip"
    if [ -L "$_ib" ]; then IFS=$_iifs; set +f; CV_LINK=$_ib; return 1; fi
  done
  IFS=$_iifs; set +f
  return 0
}
# Builds in the attempt's own directory `releases/.<id>.<attempt>`, then, under the lease
# mutex and only while this attempt still holds the lease, marks it complete and renames
# it to `releases/<id>`: an abandoned attempt can never complete or change a later one's.
cv_build() {
  cv_safe "$1" || cv_die "invalid release id: $1"
  _bd="$P/releases/.$1.$T"; _bi=$1; shift
  if cv_complete "$_bi"; then cv_say "build=skipped release=$_bi"; return 0; fi
  [ -d "$_bd" ] || cv_die "release dir $_bd does not exist (fetch first)"
  (cd "$_bd" && cv_run "$@") || return $?
  cv_locked cv_publish "$_bi" "$_bd"
}
cv_publish() {
  if cv_gone; then rm -rf "$2"; return 1; fi
  cv_lease_read
  if [ "$L_HOLDER" != "$H" ] || [ "$L_ATTEMPT" != "$T" ] || [ "$L_EXPIRES" -le "$(cv_now)" ]; then
    cv_say "fenced holder=$L_HOLDER generation=$L_GEN expires=$L_EXPIRES"
    cv_err "fenced: this attempt no longer holds the lease; its build is discarded"
    rm -rf "$2"
    return 75
  fi
  cv_read _brv "$2/.convoy-revision" || _brv=
  [ -n "$_brv" ] || _brv=${cv_env_revision:-}
  cv_write "$2/.convoy-complete" "built_at=$(cv_now)
revision=$_brv" || return 1
  if [ -e "$P/releases/$1" ] || [ -L "$P/releases/$1" ]; then rm -rf "$P/releases/$1" || return 1; fi
  mv "$2" "$P/releases/$1" || return 1
  cv_say "build=done release=$1"
}
