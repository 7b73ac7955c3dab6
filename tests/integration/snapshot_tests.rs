//! The suite never reads the working tree's `manifests/` directly: tests work on copies of
//! one snapshot taken when the suite first needs it (`util::bundled`), so an operator
//! editing the demo while the suite runs cannot fail it.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use crate::util::{Snapshot, repo_root};

#[test]
fn a_snapshot_keeps_the_tree_as_it_was_when_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("demo/bin")).unwrap();
    fs::write(tree.join("site.yaml"), "kind: Site\n").unwrap();
    fs::write(tree.join("demo/bin/build"), "#!/bin/sh\ntrue\n").unwrap();
    fs::set_permissions(
        tree.join("demo/bin/build"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let snapshot = Snapshot::take(&tree);

    // An edit in progress: a file made invalid, another removed.
    fs::write(tree.join("site.yaml"), "kind: [").unwrap();
    fs::remove_file(tree.join("demo/bin/build")).unwrap();

    let copy = tmp.path().join("copy");
    snapshot.write("", &copy);
    assert_eq!(
        fs::read_to_string(copy.join("site.yaml")).unwrap(),
        "kind: Site\n"
    );
    let build = copy.join("demo/bin/build");
    assert_eq!(fs::read_to_string(&build).unwrap(), "#!/bin/sh\ntrue\n");
    assert_eq!(
        fs::metadata(&build).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let demo = tmp.path().join("only-demo");
    snapshot.write("demo", &demo);
    assert!(demo.join("bin/build").is_file());
    assert!(!demo.join("site.yaml").exists());
}

/// Where a test source names `manifests…` as a path, it must be a path inside something
/// the test made (`tmp.path().join("manifests")`, `fleet.dir.path().join(…)`): never the
/// repository's (`repo_root()`, `CARGO_MANIFEST_DIR`), and never a bare relative path that
/// a command run from the repository root would resolve into the working tree.
#[test]
fn no_test_or_bench_reads_the_working_trees_manifests() {
    let mut offending = vec![];
    for dir in ["tests/integration", "benches"] {
        let mut files: Vec<_> = fs::read_dir(repo_root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            // util.rs takes the snapshot; this file holds examples of what it refuses.
            .filter(|p| !p.ends_with("util.rs") && !p.ends_with("snapshot_tests.rs"))
            .collect();
        files.sort();
        for file in files {
            let text = fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                if reads_repo_manifests(line) {
                    offending.push(format!("{}:{}: {}", rel(&file), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offending.is_empty(),
        "tests must copy the bundled manifests (util::bundled_manifests_in, bundled_file, \
         copy_demo_into) instead of reading manifests/ in the working tree:\n{}",
        offending.join("\n")
    );
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Whether `line` names the repository's `manifests` directory or a path in it.
fn reads_repo_manifests(line: &str) -> bool {
    if line.contains("root()") || line.contains("CARGO_MANIFEST_DIR") {
        return line.contains("\"manifests");
    }
    let mut rest = line;
    while let Some(at) = rest.find("\"manifests") {
        let after = &rest[at + "\"manifests".len()..];
        if after.starts_with('/') || after.starts_with('"') {
            // Allowed only as the argument of a method on something else: `x.join("manifests")`.
            let before = rest[..at].trim_end();
            let method = before
                .strip_suffix('(')
                .map(|b| b.trim_end_matches(|c: char| c.is_alphanumeric() || c == '_'))
                .is_some_and(|b| b.ends_with('.'));
            if !method {
                return true;
            }
        }
        rest = after;
    }
    false
}

#[test]
fn the_checker_tells_copies_from_the_working_tree() {
    for line in [
        r#"let out = convoy(&["validate", "-f", "manifests"]);"#,
        r#"        "manifests/examples/php-behind-lb","#,
        r#"fs::read_to_string(repo_root().join("manifests/jobs-manager.yaml"))"#,
        r#"let mut stack = vec![root().join("manifests")];"#,
        r#"Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")"#,
        r#"fs::read("manifests/releases.yaml")"#,
    ] {
        assert!(reads_repo_manifests(line), "not caught: {line}");
    }
    for line in [
        r#".arg(fleet.dir.path().join("manifests"))"#,
        r#"let dir = tmp.path().join("manifests");"#,
        r#"fs::create_dir_all(s.path("manifests/sites/app-src")).unwrap();"#,
        r#"d.log_text().matches("manifests loaded").count()"#,
        r#"let dir = root.join("manifests");"#,
    ] {
        assert!(!reads_repo_manifests(line), "wrongly caught: {line}");
    }
}
