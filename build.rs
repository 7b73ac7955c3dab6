//! Build script: the git commit that `convoy --version` names (`VERGEN_GIT_SHA`, from
//! `vergen-gitcl`), or `unknown` when building from a tarball without `.git`. It must never
//! fail the build.

use std::path::Path;
use std::process::Command;

use vergen_gitcl::{Emitter, Gitcl};

fn main() {
    let gitcl = Gitcl::builder().sha(true).build();
    let emitted = Emitter::default()
        .fail_on_error()
        .add_instructions(&gitcl)
        .and_then(|emitter| emitter.emit());
    if let Err(e) = emitted {
        println!("cargo:warning=`convoy --version` names no commit: {e}");
        println!("cargo:rustc-env=VERGEN_GIT_SHA=unknown");
    }
    rerun_on_new_commit();
}

/// vergen watches `<git-dir>/HEAD` and `<git-dir>/<ref>`, which misses a commit in a linked
/// worktree (its branch lives in the common directory) and a ref that `git gc` packed: watch
/// where git itself says they are.
fn rerun_on_new_commit() {
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        // A path that does not exist would make cargo rerun this script on every build.
        if let Some(path) = git(&["rev-parse", "--git-path", &name])
            && Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
