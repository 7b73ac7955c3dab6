//! CRDs: the checked-in `crds/` match what `convoy crds` prints, and every manifest in
//! `manifests/` validates against those schemas with a JSON-schema validator.

use std::fs;
use std::path::Path;

use convoy::manifest::crd;
use convoy::manifest::types::Kind;
use serde_json::Value;

use crate::util::{bundled_manifests_in, convoy, repo_root, stderr, stdout};

#[test]
fn checked_in_crds_match_generated() {
    for kind in Kind::ALL {
        let path = repo_root().join("crds").join(crd::file_name(kind));
        let on_disk = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == crd::to_yaml(kind),
            "{} is out of date: run `cargo run -- crds --out-dir crds` and commit",
            path.display()
        );
    }
    let out = convoy(&["crds"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let on_disk: Vec<String> = Kind::ALL
        .iter()
        .map(|k| fs::read_to_string(repo_root().join("crds").join(crd::file_name(*k))).unwrap())
        .collect();
    assert_eq!(stdout(&out), on_disk.join("---\n"));
}

fn schema_of(kind_name: &str) -> Value {
    let kind = Kind::parse(kind_name).unwrap_or_else(|| panic!("unknown kind {kind_name}"));
    let text = fs::read_to_string(repo_root().join("crds").join(crd::file_name(kind))).unwrap();
    let crd: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(crd["apiVersion"], "apiextensions.k8s.io/v1");
    assert_eq!(crd["kind"], "CustomResourceDefinition");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn yaml_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

fn schema_errors(doc: &Value) -> Vec<String> {
    let schema = schema_of(doc["kind"].as_str().unwrap());
    let validator = jsonschema::validator_for(&schema).expect("CRD schema compiles");
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn every_bundled_manifest_validates_against_the_crd_schemas() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = vec![];
    yaml_files(&bundled_manifests_in(tmp.path()), &mut files);
    let mut checked = 0;
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let errors = schema_errors(&doc);
            assert!(errors.is_empty(), "{}: {errors:?}", file.display());
            checked += 1;
        }
    }
    assert_eq!(checked, 28, "every manifest document was checked");
}

#[test]
fn the_schemas_reject_a_manifest_with_wrong_types() {
    let doc: Value = serde_saphyr::from_str(
        "apiVersion: convoy.dev/v1alpha1\nkind: Site\nmetadata: {name: x}\nspec:\n  release: r\n  path: /a\n  stages: [{name: a}]\n  fetch: {}\n  keepReleases: many\n  health: {command: x, timeout: 5 minutes}\n",
    )
    .unwrap();
    let errors = schema_errors(&doc).join("\n");
    assert!(errors.contains("/spec/keepReleases"), "{errors}");
    assert!(errors.contains("/spec/health/timeout"), "{errors}");
    assert!(
        errors.contains("group"),
        "missing required stage group: {errors}"
    );
}

#[test]
fn schemas_are_structural_for_kubernetes() {
    // No $ref, no additionalProperties beside properties: the API server would refuse them.
    fn walk(v: &Value, path: &str) {
        if let Value::Object(map) = v {
            assert!(!map.contains_key("$ref"), "$ref at {path}");
            assert!(
                !(map.contains_key("properties") && map.contains_key("additionalProperties")),
                "additionalProperties beside properties at {path}"
            );
            for (k, v) in map {
                walk(v, &format!("{path}/{k}"));
            }
        } else if let Value::Array(items) = v {
            items.iter().for_each(|i| walk(i, path));
        }
    }
    for kind in Kind::ALL {
        walk(&crd::crd(kind), kind.as_str());
    }
}
