//! A Release's `spec.revision` is immutable once applied, Kubernetes-style: an edit is a
//! located validation error (exit 2, nothing touched), never silently ignored.

use std::fs;

use crate::local_reconcile_tests::mtimes;
use crate::paths_tests::manifests;
use crate::util::{convoy_in, stderr, stderr_without_log, stdout};

#[test]
fn editing_the_revision_of_an_applied_release_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("manifests");
    fs::create_dir_all(dir.join("app-src")).unwrap();
    fs::write(dir.join("app-src/index.html"), "v1\n").unwrap();
    let file = dir.join("app.yaml");
    fs::write(&file, manifests(tmp.path(), "app-src")).unwrap();
    let (m, state) = (
        dir.display().to_string(),
        tmp.path().join("state").display().to_string(),
    );
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["-f", &m, "--state-dir", &state]);
        convoy_in(tmp.path(), &all)
    };
    let out = run(&["reconcile", "--once"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );

    let text = fs::read_to_string(&file).unwrap();
    fs::write(&file, text.replace("revision: v1", "revision: v2")).unwrap();
    let before = mtimes(&tmp.path().join("hosts"));
    let expected = format!(
        "{}:11:29: Release/r1: spec.revision: field is immutable: release r1 of site app was applied with revision v1; make a new Release\n\
         1 error: manifests are invalid; nothing was changed on any host\n",
        file.display()
    );
    for command in [&["reconcile", "--once"][..], &["plan"]] {
        let out = run(command);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {}", stdout(&out));
        assert_eq!(stderr_without_log(&out), expected, "{command:?}");
    }
    assert_eq!(before, mtimes(&tmp.path().join("hosts")), "nothing touched");

    // A new Release with the new revision is the way forward.
    let text = fs::read_to_string(&file)
        .unwrap()
        .replace("revision: v2", "revision: v1");
    let text = format!(
        "{text}---\napiVersion: convoy.dev/v1alpha1\nkind: Release\nmetadata: {{name: r2}}\nspec: {{site: app, revision: v2}}\n"
    )
    .replace("release: r1", "release: r2");
    fs::write(&file, text).unwrap();
    let out = run(&["reconcile", "--once"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}
