//! `convoy validate`: valid manifests pass with a summary; every invalid fixture fails with
//! its exact, located message (golden files in `snapshots/`); garbage never panics.

use std::fs;

use convoy::manifest::load::{Loaded, parse_file_into};
use proptest::prelude::*;

use crate::util::{
    assert_contains_all, bundled_file, bundled_manifests_in, convoy, convoy_in, repo_root, stderr,
    stdout,
};

#[test]
fn bundled_manifests_are_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let manifests = bundled_manifests_in(tmp.path()).display().to_string();
    let out = convoy(&["validate", "-f", &manifests]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "12 sites, 4 server groups, 12 releases, 16 hosts: valid\n"
    );
}

#[test]
fn every_example_validates_on_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let examples = bundled_manifests_in(tmp.path()).join("examples");
    for example in ["wordpress-fleet", "php-behind-lb"] {
        let dir = examples.join(example).display().to_string();
        let out = convoy(&["validate", "-f", &dir]);
        assert_eq!(out.status.code(), Some(0), "{example}: {}", stderr(&out));
    }
    let dir = examples.join("wordpress-fleet").display().to_string();
    let out = convoy(&["validate", "-f", &dir]);
    assert_eq!(
        stdout(&out),
        "10 sites, 1 server group, 10 releases, 10 hosts: valid\n"
    );
}

#[test]
fn yaml_edge_cases_are_valid() {
    let out = convoy(&["validate", "-f", "tests/fixtures/valid"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "1 site, 1 server group, 1 release, 2 hosts: valid\n"
    );
}

#[test]
fn each_invalid_fixture_fails_with_its_exact_message() {
    let dir = repo_root().join("tests/fixtures/invalid");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 30, "fixtures missing: {names:?}");
    for name in names {
        let path = format!("tests/fixtures/invalid/{name}");
        let out = convoy(&["validate", "-f", &path]);
        assert_eq!(out.status.code(), Some(2), "{path} should be invalid");
        assert_eq!(stdout(&out), "", "{path}: nothing on stdout when invalid");
        let case = name.trim_end_matches(".yaml");
        insta::with_settings!({snapshot_path => "snapshots/invalid", prepend_module_to_snapshot => false, omit_expression => true}, {
            insta::assert_snapshot!(case, stderr(&out));
        });
    }
}

#[test]
fn empty_directory_and_missing_directory_get_clear_messages() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("empty")).unwrap();
    let out = convoy_in(tmp.path(), &["validate", "-f", "empty"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "empty: no manifests found (looked for *.yaml and *.yml files, recursively)\n1 error: manifests are invalid; nothing was changed on any host\n"
    );
    let out = convoy_in(tmp.path(), &["validate", "-f", "missing"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("missing: failed to read manifests: No such file or directory")
    );
}

#[test]
fn documents_in_any_order_across_files_and_folders() {
    // The Site comes before its Release and group, in a deeper folder: order must not matter.
    let tmp = tempfile::tempdir().unwrap();
    let src = bundled_file("jobs-manager.yaml");
    let mut docs: Vec<&str> = src.split("\n---\n").collect();
    docs.reverse();
    fs::create_dir_all(tmp.path().join("a/b")).unwrap();
    fs::write(
        tmp.path().join("a/b/0-site-first.yml"),
        docs.join("\n---\n"),
    )
    .unwrap();
    fs::write(tmp.path().join("z.yaml"), bundled_file("releases.yaml")).unwrap();
    fs::write(tmp.path().join("notes.txt"), "not a manifest").unwrap();
    fs::create_dir(tmp.path().join(".git")).unwrap();
    fs::write(tmp.path().join(".git/ignored.yaml"), "garbage: [").unwrap();
    let out = convoy_in(tmp.path(), &["validate", "-f", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "1 site, 2 server groups, 1 release, 3 hosts: valid\n"
    );
}

#[test]
fn errors_across_files_are_all_reported_sorted_by_file() {
    let tmp = tempfile::tempdir().unwrap();
    for (file, text) in [
        (
            "b.yaml",
            "apiVersion: convoy.dev/v1alpha1\nkind: Release\nmetadata: {name: r1}\nspec: {site: nope, revision: v1}\n",
        ),
        (
            "a.yaml",
            "apiVersion: convoy.dev/v1alpha1\nkind: Release\nmetadata: {name: r2}\nspec: {site: gone, revision: v1}\n",
        ),
    ] {
        fs::write(tmp.path().join(file), text).unwrap();
    }
    let out = convoy_in(tmp.path(), &["validate", "-f", "."]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "./a.yaml:4:14: Release/r2: spec.site: Site `gone` is not defined\n\
         ./b.yaml:4:14: Release/r1: spec.site: Site `nope` is not defined\n\
         2 errors: manifests are invalid; nothing was changed on any host\n"
    );
}

/// Every wrongly typed field of a document is reported in one run, each with its file,
/// line and field: an operator fixes them in one round, not one per run.
#[test]
fn every_type_error_in_a_document_is_reported_in_one_run() {
    let out = convoy(&[
        "validate",
        "-f",
        "tests/fixtures/invalid/every-type-error-at-once.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let located: Vec<(&str, &str)> = err
        .lines()
        .filter_map(|l| l.strip_prefix("tests/fixtures/invalid/every-type-error-at-once.yaml:"))
        .map(|l| {
            let mut parts = l.splitn(4, ": ");
            let at = parts.next().unwrap();
            parts.next(); // Kind/name
            (at, parts.next().unwrap())
        })
        .collect();
    assert_eq!(
        located,
        [
            ("7:11", "spec.ssh.port"),
            ("8:22", "spec.ssh.hostKeyChecking"),
            ("9:21", "spec.ssh.connectTimeout"),
            ("10:16", "spec.maxParallel"),
            ("14:22", "spec.hosts[0].labels.zone"),
            ("34:17", "spec.stages[0].optional"),
            ("37:39", "spec.health.timeout"),
            ("37:59", "spec.health.retries"),
            ("38:17", "spec.keepReleases"),
            ("39:3", "spec.rolout"),
        ],
        "{err}"
    );
    assert!(err.ends_with("10 errors: manifests are invalid; nothing was changed on any host\n"));
}

/// A key written twice in one mapping names the key and both lines, wherever it is, and
/// every such key is found at once.
#[test]
fn a_key_written_twice_is_reported_with_both_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let text = "apiVersion: convoy.dev/v1alpha1\nkind: ServerGroup\nmetadata:\n  name: web\nspec:\n  hosts:\n    - name: h1\n      address: 10.0.0.1\n      name: h2\n  maxParallel: 2\n  maxParallel: 3\n";
    fs::write(tmp.path().join("g.yaml"), text).unwrap();
    let out = convoy_in(tmp.path(), &["validate", "-f", "g.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "g.yaml:9:7: ServerGroup/web: spec.hosts[0].name: duplicate key `name`: already written at line 7; each key may appear once\n\
         g.yaml:11:3: ServerGroup/web: spec.maxParallel: duplicate key `maxParallel`: already written at line 10; each key may appear once\n\
         2 errors: manifests are invalid; nothing was changed on any host\n"
    );
}

/// A reference by name with a typo gets the name it probably meant.
#[test]
fn a_reference_with_a_typo_gets_a_did_you_mean() {
    let out = convoy(&[
        "validate",
        "-f",
        "tests/fixtures/invalid/reference-typo.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_contains_all(
        &err,
        [
            "Site/app: spec.stages[0].group: ServerGroup `wbe` is not defined in this file; did you mean `web`?",
            "Site/app: spec.release: Release `r2026-11-82.1` is not defined in this file; did you mean `r2026-11-28.1`?",
            "Release/r2026-11-28.2: spec.site: Site `ap` is not defined in this file; did you mean `app`?",
        ],
    );
}

/// `-f FILE` reads that file alone: a reference to an object in another file is reported,
/// and the message says only that file was read, so the operator passes the directory.
#[test]
fn with_one_file_references_are_looked_up_in_that_file_only() {
    let tmp = tempfile::tempdir().unwrap();
    let src = bundled_file("jobs-manager.yaml");
    let (groups, site) = src.split_at(src.find("kind: Site").unwrap());
    let groups = groups
        .trim_end()
        .strip_suffix("apiVersion: convoy.dev/v1alpha1")
        .unwrap();
    fs::write(tmp.path().join("groups.yaml"), groups).unwrap();
    fs::write(
        tmp.path().join("site.yaml"),
        format!("apiVersion: convoy.dev/v1alpha1\n{site}"),
    )
    .unwrap();
    fs::write(
        tmp.path().join("releases.yaml"),
        bundled_file("releases.yaml"),
    )
    .unwrap();
    crate::util::copy_demo_into(tmp.path());
    let out = convoy_in(tmp.path(), &["validate", "-f", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = convoy_in(tmp.path(), &["validate", "-f", "site.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let note = "(`-f` named a single file, so no other file was read: pass the manifest directory to look in all of them)";
    assert_contains_all(
        &err,
        [
            format!(
                "site.yaml:6:12: Site/jobs-manager: spec.release: Release `r2026-11-24.1` is not defined in this file {note}"
            ),
            format!(
                "site.yaml:10:14: Site/jobs-manager: spec.stages[0].group: ServerGroup `demo-scheduler` is not defined in this file {note}"
            ),
            format!(
                "site.yaml:16:14: Site/jobs-manager: spec.stages[1].group: ServerGroup `demo-frontend` is not defined in this file {note}"
            ),
        ],
    );
    // Read as a directory, a missing object is simply not defined: no note about one file.
    fs::remove_file(tmp.path().join("releases.yaml")).unwrap();
    let out = convoy_in(tmp.path(), &["validate", "-f", "."]);
    assert_eq!(
        stderr(&out),
        "./site.yaml:6:12: Site/jobs-manager: spec.release: Release `r2026-11-24.1` is not defined\n1 error: manifests are invalid; nothing was changed on any host\n"
    );
}

/// Every prefix of every valid manifest, and byte-level damage, yields errors or success,
/// never a panic, and every error names the file.
#[test]
fn truncated_and_garbled_yaml_never_panics() {
    let sources = [
        bundled_file("jobs-manager.yaml").into_bytes(),
        fs::read(repo_root().join("tests/fixtures/valid/edge-cases.yaml")).unwrap(),
        bundled_file("examples/php-behind-lb/shop.yaml").into_bytes(),
    ];
    let mut errors = 0;
    for src in &sources {
        for cut in 0..src.len() {
            let mut loaded = Loaded::default();
            parse_file_into("cut.yaml", &src[..cut], &mut loaded);
            errors += loaded.diagnostics.len();
            assert!(loaded.diagnostics.iter().all(|d| d.file == "cut.yaml"));
        }
        // Flip bytes to characters that matter to YAML.
        for (i, garbage) in [b'{', b'[', b':', b'"', b'\t', b'&', b'*', b'!', b'|', 0xff]
            .iter()
            .cycle()
            .take(400)
            .enumerate()
        {
            let mut damaged = src.clone();
            let at = (i * 7919) % damaged.len();
            damaged[at] = *garbage;
            let mut loaded = Loaded::default();
            parse_file_into("damaged.yaml", &damaged, &mut loaded);
            errors += loaded.diagnostics.len();
        }
    }
    assert!(errors > 1000, "damage should produce errors, got {errors}");
}

#[test]
fn alias_bombs_are_refused_not_expanded() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..20 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let mut loaded = Loaded::default();
    parse_file_into("bomb.yaml", text.as_bytes(), &mut loaded);
    assert_eq!(loaded.diagnostics.len(), 1, "{:?}", loaded.diagnostics);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut loaded = Loaded::default();
        parse_file_into("random.yaml", &bytes, &mut loaded);
        prop_assert!(loaded.objects.len() + loaded.diagnostics.len() > 0);
    }

    #[test]
    fn random_yaml_like_text_never_panics(text in "[a-zA-Z:\\-\\[\\]{}&*!|>'\" \n#,.%@`0-9]{0,300}") {
        let mut loaded = Loaded::default();
        parse_file_into("random.yaml", text.as_bytes(), &mut loaded);
        prop_assert!(loaded.objects.len() + loaded.diagnostics.len() > 0);
    }
}
