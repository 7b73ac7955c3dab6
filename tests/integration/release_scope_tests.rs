//! Release names are scoped to their site, as names are to a namespace in Kubernetes: two
//! sites may both have a Release `r2026-11-28.1`, and everything keyed on a release (the
//! desired state, the state dir's records, history, metrics) keeps them apart. Deploys run
//! on `address: local` hosts, so no sshd is needed.

use std::fs;
use std::path::Path;

use crate::fleet::assert_exit;
use crate::util::{assert_contains_all, convoy_in, stderr, stdout};

/// Two sites on one local host, each with Release `r2026-11-28.1` of its own revision and
/// its own archive (`apps/{site}-{release}`); the build writes the site and revision it was
/// given.
fn two_sites_one_release_name(root: &Path, revision_b: &str) {
    let dir = root.join("fleet");
    for site in ["a", "b"] {
        let app = dir.join(format!("apps/{site}-r2026-11-28.1"));
        fs::create_dir_all(&app).unwrap();
        fs::write(app.join("README"), format!("the code of {site}\n")).unwrap();
    }
    let mut docs = vec![format!(
        "apiVersion: convoy.dev/v1alpha1\nkind: ServerGroup\nmetadata: {{name: local}}\nspec:\n  hosts:\n    - {{name: l1, address: local, root: {}}}\n",
        root.join("hosts/l1").display()
    )];
    for (site, revision) in [("a", "v1"), ("b", revision_b)] {
        docs.push(format!(
            "apiVersion: convoy.dev/v1alpha1\nkind: Site\nmetadata: {{name: {site}}}\nspec:\n  release: r2026-11-28.1\n  path: /srv/{site}\n  stages: [{{name: web, group: local}}]\n  fetch: {{archive: {{path: \"apps/{{site}}-{{release}}\"}}}}\n  build: ['printf \"%s %s\\n\" \"$CONVOY_SITE\" \"$CONVOY_REVISION\" > built-for']\n"
        ));
        docs.push(format!(
            "apiVersion: convoy.dev/v1alpha1\nkind: Release\nmetadata: {{name: r2026-11-28.1}}\nspec: {{site: {site}, revision: {revision}}}\n"
        ));
    }
    fs::write(dir.join("fleet.yaml"), docs.join("---\n")).unwrap();
}

#[test]
fn two_sites_may_each_have_a_release_of_the_same_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    two_sites_one_release_name(root, "v2");
    let out = convoy_in(root, &["validate", "-f", "fleet"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "2 sites, 1 server group, 2 releases, 1 host: valid\n"
    );

    let textfile = root.join("convoy.prom").display().to_string();
    let reconcile = || reconcile_once(root, "fleet", &["--metrics-textfile", textfile.as_str()]);
    assert_exit(&reconcile(), 0);
    // Each site built its own Release: the desired state took the revision of the Release
    // whose `spec.site` is that site.
    for (site, revision) in [("a", "v1"), ("b", "v2")] {
        let current = root.join(format!("hosts/l1/srv/{site}/current"));
        assert_eq!(
            fs::read_link(&current).unwrap(),
            Path::new("releases/r2026-11-28.1")
        );
        assert_eq!(
            fs::read_to_string(current.join("built-for")).unwrap(),
            format!("{site} {revision}\n")
        );
        assert_eq!(
            fs::read_to_string(current.join("README")).unwrap(),
            format!("the code of {site}\n"),
            "`{{site}}` in the archive path keeps two sites' archives of one release apart"
        );
        let applied =
            fs::read_to_string(root.join(format!("state/sites/{site}/applied.json"))).unwrap();
        let applied: serde_json::Value = serde_json::from_str(&applied).unwrap();
        assert_eq!(applied["r2026-11-28.1"], revision, "{site}: {applied}");
        // One host, one build and one switch per site: the other site's events of the same
        // release name are not in this site's history.
        let history = stdout(&convoy_in(root, &["history", site, "--state-dir", "state"]));
        assert_eq!(
            history.matches("Built      r2026-11-28.1").count(),
            1,
            "{history}"
        );
        assert_eq!(
            history.matches("Switched   r2026-11-28.1").count(),
            1,
            "{history}"
        );
    }
    let metrics = fs::read_to_string(&textfile).unwrap();
    for site in ["a", "b"] {
        let line = format!(
            "convoy_site_desired_release_info{{site=\"{site}\",release=\"r2026-11-28.1\"}} 1"
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }

    // The revision is immutable per (site, release): changing site b's is refused, located
    // at b's Release, and says nothing of site a's Release of the same name.
    two_sites_one_release_name(root, "v3");
    let out = reconcile();
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = crate::util::stderr_without_log(&out);
    assert!(
        err.starts_with("fleet/fleet.yaml:36:27: Release/r2026-11-28.1: spec.revision: field is immutable: release r2026-11-28.1 of site b was applied with revision v2; make a new Release\n1 error"),
        "{err}"
    );
}

/// Within one site a Release name is still unique.
#[test]
fn a_release_name_is_unique_within_its_site() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    two_sites_one_release_name(root, "v2");
    let file = root.join("fleet/fleet.yaml");
    let text = fs::read_to_string(&file)
        .unwrap()
        .replace("site: b,", "site: a,");
    fs::write(&file, text).unwrap();
    let out = convoy_in(root, &["validate", "-f", "fleet"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_contains_all(
        &err,
        [
            "fleet/fleet.yaml:35:18: Release/r2026-11-28.1: metadata.name: duplicate Release name `r2026-11-28.1` for Site `a`: already defined at fleet/fleet.yaml:20:18",
            // And site b, left without a Release, is told where the one of that name went.
            "fleet/fleet.yaml:27:12: Site/b: spec.release: this site has no Release `r2026-11-28.1`: the Release `r2026-11-28.1` at fleet/fleet.yaml:20:18 belongs to Site `a`",
        ],
    );
}

/// The README's quickstart, `reconcile --once -f manifests`, over every bundled manifest:
/// ten WordPress sites all run a Release named `r2026-11-20.1`.
#[test]
fn the_bundled_manifests_deploy_with_one_release_name_in_many_sites() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = crate::util::bundled_manifests_in(tmp.path());
    let hosts = tmp.path().join("hosts").display().to_string();
    let mut files = vec![];
    for entry in walk(&dir) {
        if entry.extension().is_some_and(|e| e == "yaml") {
            files.push(entry);
        }
    }
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        fs::write(file, text.replace("/tmp/convoy-demo", &hosts)).unwrap();
    }
    assert_exit(
        &reconcile_once(tmp.path(), &dir.display().to_string(), &[]),
        0,
    );
    for blog in ["licensing", "blog-juliett"] {
        for host in ["wp01", "wp10"] {
            let current = tmp
                .path()
                .join(format!("hosts/wordpress/{host}/var/www/{blog}/current"));
            assert_eq!(
                fs::read_link(&current).unwrap(),
                Path::new("releases/r2026-11-20.1"),
                "{blog} on {host}"
            );
            assert_eq!(
                fs::read_to_string(current.join("build/version")).unwrap(),
                format!("{blog} r2026-11-20.1\n")
            );
        }
    }
}

/// `convoy reconcile --once -f MANIFESTS` from `root`, with its state in `root/state`.
fn reconcile_once(root: &Path, manifests: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "reconcile",
        "--once",
        "-f",
        manifests,
        "--state-dir",
        "state",
    ];
    args.extend(extra);
    convoy_in(root, &args)
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
