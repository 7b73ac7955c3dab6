//! Controller-side paths in manifests, on `address: local` hosts: a relative path is the
//! manifest file's, not the working directory's, and `fetch.archive.path` can never ship
//! controller files (the state dir, SSH keys) to a host.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::fleet::{Fleet, SiteDef, assert_exit};
use crate::util::{convoy_in, stderr, stderr_without_log, stdout};

/// A group of one local host rooted in `<tmp>/hosts/h1`, a Release and a Site fetching
/// `archive`.
pub fn manifests(tmp: &Path, archive: &str) -> String {
    format!(
        "apiVersion: convoy.dev/v1alpha1\nkind: ServerGroup\nmetadata: {{name: local}}\nspec:\n  hosts:\n    - {{name: h1, address: local, root: {root}}}\n---\n\
         apiVersion: convoy.dev/v1alpha1\nkind: Release\nmetadata: {{name: r1}}\nspec: {{site: app, revision: v1}}\n---\n\
         apiVersion: convoy.dev/v1alpha1\nkind: Site\nmetadata: {{name: app}}\nspec:\n  release: r1\n  path: /srv/app\n  stages: [{{name: web, group: local}}]\n  fetch:\n    archive: {{path: \"{archive}\"}}\n",
        root = tmp.join("hosts/h1").display()
    )
}

struct Setup {
    tmp: tempfile::TempDir,
}

impl Setup {
    /// `<tmp>/manifests/sites/app.yaml` fetching `archive`, and a state dir holding a secret.
    fn new(archive: &str) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let sites = tmp.path().join("manifests/sites");
        fs::create_dir_all(&sites).unwrap();
        fs::write(sites.join("app.yaml"), manifests(tmp.path(), archive)).unwrap();
        fs::create_dir_all(tmp.path().join("state")).unwrap();
        fs::write(tmp.path().join("state/id_ed25519"), "SECRET KEY").unwrap();
        fs::create_dir_all(tmp.path().join("elsewhere")).unwrap();
        Setup { tmp }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// Runs `convoy ARGS -f <manifests> --state-dir <state>` from an unrelated directory.
    fn convoy(&self, args: &[&str]) -> std::process::Output {
        let manifests = self.path("manifests").display().to_string();
        let state = self.path("state").display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-f", &manifests, "--state-dir", &state]);
        convoy_in(&self.path("elsewhere"), &all)
    }

    /// `reconcile --once` and `plan` refuse with exit 2 and touch no host; `validate` says why.
    fn assert_refused(&self, extra: &[&str], why: &str) {
        for command in [&["reconcile", "--once"][..], &["plan"], &["validate"]] {
            let args: Vec<&str> = command.iter().chain(extra).copied().collect();
            let out = self.convoy(&args);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{args:?}: {}{}",
                stdout(&out),
                stderr(&out)
            );
            let text = stderr_without_log(&out);
            let at = format!(
                "{}:21:21: Site/app: spec.fetch.archive.path: invalid archive path",
                self.path("manifests/sites/app.yaml").display()
            );
            assert!(text.starts_with(&at), "{args:?}: {text}");
            assert!(text.contains(why), "{args:?}: {text}");
            assert!(!self.path("hosts").exists(), "{args:?}: nothing touched");
        }
    }
}

#[test]
fn a_relative_archive_path_is_the_manifest_files_not_the_working_directorys() {
    let s = Setup::new("app-src");
    fs::create_dir_all(s.path("manifests/sites/app-src")).unwrap();
    fs::write(s.path("manifests/sites/app-src/index.html"), "hello\n").unwrap();
    let out = s.convoy(&["reconcile", "--once"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(
        fs::read_to_string(s.path("hosts/h1/srv/app/current/index.html")).unwrap(),
        "hello\n"
    );
}

#[test]
fn an_archive_path_leaving_the_manifest_directory_is_refused() {
    let s = Setup::new("../../state");
    s.assert_refused(&[], "outside the manifest directory");
}

#[test]
fn an_archive_path_through_a_symlink_out_of_the_manifest_directory_is_refused() {
    let s = Setup::new("dist");
    symlink(s.path("state"), s.path("manifests/sites/dist")).unwrap();
    s.assert_refused(&[], "outside the manifest directory");
}

#[test]
fn a_release_placeholder_is_checked_with_the_release_filled_in() {
    let s = Setup::new("dist/{release}");
    fs::create_dir_all(s.path("manifests/sites/dist")).unwrap();
    symlink(s.path("state"), s.path("manifests/sites/dist/r1")).unwrap();
    s.assert_refused(&[], "outside the manifest directory");
    // A release archive that is not built yet is no reason to refuse the manifests.
    let s = Setup::new("dist/{release}.tar.gz");
    let out = s.convoy(&["validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn an_absolute_archive_path_needs_an_archive_root() {
    let s = Setup::new("");
    let secret = s.path("state");
    fs::write(
        s.path("manifests/sites/app.yaml"),
        manifests(s.tmp.path(), &secret.display().to_string()),
    )
    .unwrap();
    s.assert_refused(&[], "--archive-root (none given)");
    let other = s.path("releases").display().to_string();
    fs::create_dir_all(s.path("releases")).unwrap();
    s.assert_refused(&["--archive-root", &other], "not under an archive root");
    let allowed = s.path("state").display().to_string();
    let out = s.convoy(&["validate", "--archive-root", &allowed]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Hosts known only by `Host` aliases whose `HostName`, `Port`, `User` and `IdentityFile`
/// live in the group's `configFile`, given relative to the manifest (convoy runs from the
/// directory above it): ssh_config decides what the manifest leaves unset.
#[test]
fn hosts_behind_ssh_config_aliases_are_reached_through_a_relative_config_file() {
    let fleet = Fleet::new(2);
    fs::copy(
        fleet.lab.ssh_config_file(),
        fleet.dir.path().join("manifests/ssh_config"),
    )
    .unwrap();
    let group = "apiVersion: convoy.dev/v1alpha1\nkind: ServerGroup\nmetadata: {name: web}\nspec:\n  ssh: {configFile: ssh_config, connectTimeout: 2s}\n  hosts:\n    - {name: h0, address: h0}\n    - {name: h1, address: h1}\n".to_string();
    let mut docs = vec![group];
    docs.extend(fleet.site(&SiteDef {
        stages: &[("web", "web", false, false)],
        ..SiteDef::default()
    }));
    fleet.write(&docs);
    // Bounded: with the port forced to 22 the hosts are unreachable and would be retried.
    let out = fleet.reconcile(&["--timeout", "60s"]);
    assert_exit(&out, 0);
    for i in 0..2 {
        assert_eq!(fleet.current(i, "app").as_deref(), Some("app.r1"), "h{i}");
    }
}
