//! Operations that make a release on a host (`sh/build.sh`): prepare the layout, get the
//! files (git fetch or an uploaded archive), link shared entries, build and publish. Only
//! text is built here; a release is published by the attempt that holds the lease.

use super::{Env, Script};

impl Script {
    /// Create the layout; remove `releases/<release>` if it lacks its completion marker (a
    /// half build) and temporary links left by a killed controller.
    pub fn prepare(self, release: &str) -> Self {
        self.step("prepare", None, "cv_prepare", &[release])
    }

    /// Export `revision` of `repository` into `releases/<release>` through a cached bare
    /// mirror in `P/.convoy/mirror.git`; prints `@@convoy revision=<commit>`. A full or
    /// abbreviated commit id already in the mirror is used without fetching; names
    /// (branches, tags) are always fetched first. A complete release is left alone.
    pub fn fetch_git(self, release: &str, repository: &str, revision: &str) -> Self {
        self.step(
            "fetch",
            None,
            "cv_fetch_git",
            &[release, repository, revision],
        )
    }

    /// Unpack a `.tar.gz` of `size` bytes read from the script's stdin into this
    /// attempt's build directory of `release`.
    pub fn unpack_archive(self, release: &str, size: u64) -> Self {
        let size = size.to_string();
        self.step("unpack", None, "cv_unpack", &[release, &size])
    }

    /// Symlink `shared` entries (`.env` a file, `media/` a directory) of the release to
    /// `P/shared/<entry>`, creating them (or moving the release's copy there) if missing.
    pub fn link_shared(self, release: &str, shared: &[String]) -> Self {
        let mut args = vec![release];
        args.extend(shared.iter().map(String::as_str));
        self.step("link_shared", None, "cv_link_shared", &args)
    }

    /// Run `commands` in `releases/<release>` (each with `sh -ec`, stdin from /dev/null,
    /// output to stderr); on success write the completion marker last. A complete
    /// release is not rebuilt.
    pub fn build(self, release: &str, commands: &[String], env: &Env) -> Self {
        let mut args = vec![release];
        args.extend(commands.iter().map(String::as_str));
        self.step("build", Some(env), "cv_build", &args)
    }
}
