//! CRDs: the checked-in `crds/` match what `convoy crds` prints, and every manifest in
//! `manifests/` validates against those schemas with a JSON-schema validator.

use std::fs;
use std::path::Path;

use convoy::manifest::crd;
use convoy::manifest::types::Kind;
use serde_json::Value;

use crate::util::{assert_contains_all, bundled_manifests_in, convoy, repo_root, stderr, stdout};

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

/// Errors of a JSON-schema validator reading the CRD schema as an API server does.
fn schema_errors(doc: &Value) -> Vec<String> {
    let mut schema = schema_of(doc["kind"].as_str().unwrap());
    convoy::manifest::schema::nullable_as_json_schema(&mut schema);
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

/// Keys an `apiextensions.k8s.io/v1` JSONSchemaProps may carry in a CRD. An API server with
/// strict field validation refuses any other (`const`, `$schema`, `examples`...), and refuses
/// `$ref`, `definitions`, `id`, `patternProperties`, `dependencies`, `additionalItems` and
/// `uniqueItems` in a CRD outright, so they are not listed either.
const SCHEMA_KEYS: &[&str] = &[
    "description",
    "type",
    "format",
    "title",
    "default",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "multipleOf",
    "enum",
    "maxProperties",
    "minProperties",
    "required",
    "items",
    "allOf",
    "oneOf",
    "anyOf",
    "not",
    "properties",
    "additionalProperties",
    "externalDocs",
    "example",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
];

/// Inside `anyOf`/`oneOf`/`allOf`/`not` a structural schema may only restrict values.
const FORBIDDEN_IN_BRANCHES: &[&str] = &[
    "type",
    "description",
    "default",
    "nullable",
    "additionalProperties",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
];

/// The one exception Kubernetes makes to the branch rule, on an int-or-string node.
fn is_int_or_string_branches(branches: &Value) -> bool {
    *branches == serde_json::json!([{"type": "integer"}, {"type": "string"}])
}

/// Every rule of a structural schema (Kubernetes "Specifying a structural schema") at a
/// node that is not inside a logic branch, and below it.
fn structural_problems(node: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        problems.push(format!("{path}: a schema must be an object"));
        return;
    };
    for key in map.keys().filter(|k| !SCHEMA_KEYS.contains(&k.as_str())) {
        problems.push(format!("{path}: `{key}` is not allowed in a CRD schema"));
    }
    let int_or_string = map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    match (map.contains_key("type"), int_or_string) {
        (false, false) if !preserve => problems.push(format!("{path}: no `type`")),
        (true, true) => problems.push(format!("{path}: `type` beside x-kubernetes-int-or-string")),
        _ => {}
    }
    if map.contains_key("properties") && map.contains_key("additionalProperties") {
        problems.push(format!(
            "{path}: `properties` beside `additionalProperties`"
        ));
    }
    if map.get("additionalProperties") == Some(&Value::Bool(false)) {
        problems.push(format!("{path}: `additionalProperties: false`"));
    }
    if let Some(Value::Object(properties)) = map.get("properties") {
        for (name, child) in properties {
            structural_problems(child, &format!("{path}.{name}"), problems);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child @ Value::Object(_)) = map.get(key) {
            structural_problems(child, &format!("{path}.{key}"), problems);
        }
    }
    for keyword in ["anyOf", "oneOf", "allOf"] {
        let Some(branches) = map.get(keyword) else {
            continue;
        };
        if keyword == "anyOf" && int_or_string && is_int_or_string_branches(branches) {
            continue;
        }
        for (i, branch) in branches.as_array().into_iter().flatten().enumerate() {
            branch_problems(branch, &format!("{path}.{keyword}[{i}]"), problems);
        }
    }
    if let Some(branch) = map.get("not") {
        branch_problems(branch, &format!("{path}.not"), problems);
    }
    // An API server checks that every default is valid for its own schema.
    if let Some(default) = map.get("default") {
        let validator = jsonschema::validator_for(node).expect("schema compiles");
        for e in validator.iter_errors(default) {
            problems.push(format!("{path}: default {default} is invalid: {e}"));
        }
    }
}

/// A logic branch and everything below it: value restrictions only.
fn branch_problems(branch: &Value, path: &str, problems: &mut Vec<String>) {
    match branch {
        Value::Object(map) => {
            for key in FORBIDDEN_IN_BRANCHES
                .iter()
                .filter(|k| map.contains_key(**k))
            {
                problems.push(format!("{path}: `{key}` inside a logic branch"));
            }
            for (key, child) in map {
                let child_path = format!("{path}.{key}");
                match key.as_str() {
                    "properties" => child.as_object().into_iter().flatten().for_each(|(k, v)| {
                        branch_problems(v, &format!("{child_path}.{k}"), problems)
                    }),
                    "items" | "not" => branch_problems(child, &child_path, problems),
                    "anyOf" | "oneOf" | "allOf" => child
                        .as_array()
                        .into_iter()
                        .flatten()
                        .enumerate()
                        .for_each(|(i, b)| {
                            branch_problems(b, &format!("{child_path}[{i}]"), problems)
                        }),
                    _ => {}
                }
            }
        }
        _ => problems.push(format!("{path}: a schema must be an object")),
    }
}

#[test]
fn every_crd_schema_is_structural() {
    let mut problems = vec![];
    for kind in Kind::ALL {
        let schema = &crd::crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        structural_problems(schema, kind.as_str(), &mut problems);
        // At the root, `metadata` may only be restricted in `name` and `generateName`.
        assert_eq!(
            schema["properties"]["metadata"],
            serde_json::json!({"type": "object"})
        );
    }
    assert!(
        problems.is_empty(),
        "not structural:\n{}",
        problems.join("\n")
    );
}

/// The checker above finds what it is for: a schema as schemars emits it for an enum with
/// documented variants and for an optional int-or-string is refused.
#[test]
fn the_structural_check_refuses_what_an_api_server_refuses() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "mode": {"oneOf": [{"type": "string", "enum": ["a"], "description": "A"}]},
            "budget": {"anyOf": [
                {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]},
                {"enum": [null], "nullable": true},
            ]},
            "closed": {"type": "object", "additionalProperties": false, "properties": {}},
            "constant": {"type": "string", "const": "x"},
        },
    });
    let mut problems = vec![];
    structural_problems(&bad, "Bad", &mut problems);
    let all = problems.join("\n");
    for expected in [
        "Bad.mode: no `type`",
        "Bad.mode.oneOf[0]: `type` inside a logic branch",
        "Bad.mode.oneOf[0]: `description` inside a logic branch",
        "Bad.budget: no `type`",
        "Bad.budget.anyOf[0]: `x-kubernetes-int-or-string` inside a logic branch",
        "Bad.budget.anyOf[0].anyOf[0]: `type` inside a logic branch",
        "Bad.budget.anyOf[1]: `nullable` inside a logic branch",
        "Bad.closed: `additionalProperties: false`",
        "Bad.constant: `const` is not allowed in a CRD schema",
    ] {
        assert!(
            problems.iter().any(|p| p == expected),
            "missing `{expected}` in:\n{all}"
        );
    }
}

/// Where a field takes an integer or a string, the CRD says so the way Kubernetes reads it,
/// and the rewrite to structural form kept every value rule (a JSON-schema validator still
/// refuses what the types refuse).
#[test]
fn structural_schemas_still_refuse_what_the_types_refuse() {
    let site = schema_of("Site");
    let max_failed =
        &site["properties"]["spec"]["properties"]["rollout"]["properties"]["maxFailed"];
    assert_eq!(
        max_failed["x-kubernetes-int-or-string"], true,
        "{max_failed}"
    );
    assert_eq!(max_failed["nullable"], true, "{max_failed}");
    let phase = &site["properties"]["status"]["properties"]["phase"];
    assert_eq!(phase["type"], "string", "{phase}");
    let site_with = |rollout: &str, phase: &str| -> Value {
        serde_saphyr::from_str(&format!(
            "apiVersion: convoy.dev/v1alpha1\nkind: Site\nmetadata: {{name: x}}\nspec:\n  release: r\n  path: /a\n  stages: [{{name: a, group: g}}]\n  fetch: {{git: {{repository: r}}}}\n  rollout: {rollout}\nstatus: {{phase: {phase}, desiredRelease: r}}\n"
        ))
        .unwrap()
    };
    for ok in [
        "{maxFailed: 2}",
        "{maxFailed: \"5%\"}",
        "{maxFailed: \"100%\"}",
        "{maxFailed: null}",
    ] {
        let errors = schema_errors(&site_with(ok, "Converged"));
        assert!(errors.is_empty(), "{ok}: {errors:?}");
    }
    for bad in [
        "{maxFailed: true}",
        "{maxFailed: -1}",
        "{maxFailed: \"5\"}",
        "{maxFailed: \"101%\"}",
        "{maxFailed: [1]}",
    ] {
        let errors = schema_errors(&site_with(bad, "Converged"));
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("/spec/rollout/maxFailed")),
            "{bad}: {errors:?}"
        );
    }
    let errors = schema_errors(&site_with("{}", "Sleeping"));
    assert!(
        errors.iter().any(|e| e.starts_with("/status/phase")),
        "{errors:?}"
    );
    let group: Value = serde_saphyr::from_str(
        "apiVersion: convoy.dev/v1alpha1\nkind: ServerGroup\nmetadata: {name: g}\nspec:\n  ssh: {hostKeyChecking: sometimes}\n  hosts: [{name: h, address: a}]\n",
    )
    .unwrap();
    let errors = schema_errors(&group);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("/spec/ssh/hostKeyChecking")),
        "{errors:?}"
    );
}

/// A ServerGroup and a Site, valid, with one field replaced by `value` as written in YAML.
fn documents_with(field: &str, value: &str) -> String {
    let group_ssh = |port: &str, checking: &str| {
        format!(
            "apiVersion: convoy.dev/v1alpha1\nkind: ServerGroup\nmetadata: {{name: g}}\nspec:\n  ssh: {{port: {port}, hostKeyChecking: {checking}}}\n  hosts: [{{name: h, address: a}}]\n"
        )
    };
    let site = |fields: &str| {
        format!(
            "apiVersion: convoy.dev/v1alpha1\nkind: Site\nmetadata: {{name: s}}\nspec:\n  release: r\n  path: /srv/s\n  stages: [{{name: a, group: g}}]\n  fetch: {{git: {{repository: r}}}}\n{fields}"
        )
    };
    match field {
        "ssh.port" => group_ssh(value, "strict"),
        "ssh.hostKeyChecking" => group_ssh("22", value),
        "suspend" => site(&format!("  suspend: {value}\n")),
        "rollout.batch" => site(&format!("  rollout: {{batch: {value}}}\n")),
        "rollout.maxFailed" => site(&format!("  rollout: {{maxFailed: {value}}}\n")),
        "health.timeout" => site(&format!("  health: {{command: x, timeout: {value}}}\n")),
        "path" => site("").replace("/srv/s", value),
        other => panic!("no document for {other}"),
    }
}

/// What the loader accepts and what the CRD schema accepts are the same, scalar by scalar.
/// `"22"` is not a port and `"yes"` not a boolean on either side; `yes` unquoted is a
/// boolean on both (YAML 1.1, as kubectl reads it). One difference, on purpose: a whole
/// number written as a float (`22.0`, `1e3`, or `022`, octal in YAML 1.1 and decimal in 1.2)
/// passes a JSON-schema validator but convoy asks for a plain number instead of guessing.
#[test]
fn the_loader_and_the_crd_schemas_agree_on_every_scalar() {
    let fields = [
        "ssh.port",
        "ssh.hostKeyChecking",
        "suspend",
        "rollout.batch",
        "rollout.maxFailed",
        "health.timeout",
        "path",
    ];
    let spellings = [
        "22",
        "\"22\"",
        "'22'",
        "0",
        "-1",
        "70000",
        "+22",
        "0x16",
        "0o26",
        "022",
        "1_000",
        "22.0",
        "2.5",
        "1e3",
        ".inf",
        "yes",
        "\"yes\"",
        "true",
        "\"true\"",
        "True",
        "on",
        "no",
        "~",
        "null",
        "\"\"",
        "[22]",
        "{a: 1}",
        "\"5%\"",
        "5%",
        "\"101%\"",
        "30s",
        "\"30s\"",
        "strict",
        "accept-new",
        "\"strict\"",
        "/srv/x",
    ];
    let mut disagreements = vec![];
    let mut refused = 0;
    for field in fields {
        for value in spellings {
            let text = documents_with(field, value);
            let mut loaded = convoy::manifest::load::Loaded::default();
            convoy::manifest::load::parse_file_into("doc.yaml", text.as_bytes(), &mut loaded);
            let by_loader = loaded.diagnostics.is_empty();
            let docs: Vec<Value> = match serde_saphyr::from_multiple(&text) {
                Ok(docs) => docs,
                Err(_) => {
                    assert!(!by_loader, "{field}: {value}: unreadable YAML accepted");
                    continue;
                }
            };
            let by_schema = docs.iter().all(|d| schema_errors(d).is_empty());
            if ["022", "22.0", "1e3"].contains(&value) && by_schema && !by_loader {
                let said = loaded.diagnostics[0].to_string();
                assert!(said.contains("write a plain whole number"), "{said}");
                continue;
            }
            if by_loader != by_schema {
                disagreements.push(format!(
                    "{field}: {value}: loader {by_loader}, CRD schema {by_schema}: {:?}",
                    loaded
                        .diagnostics
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                ));
            }
            refused += usize::from(!by_loader);
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    assert!(
        refused > 100,
        "most spellings are wrong for most fields: {refused}"
    );
}

/// Quoted scalars where a boolean or a number belongs are errors on both sides, each named.
#[test]
fn quoted_booleans_and_numbers_are_refused_by_the_loader_and_the_crd_schema() {
    let out = convoy(&[
        "validate",
        "-f",
        "tests/fixtures/invalid/quoted-scalars.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_contains_all(
        &err,
        [
            "tests/fixtures/invalid/quoted-scalars.yaml:7:11: ServerGroup/web: spec.ssh.port: expected a whole number from 0 to 65535, got the string \"22\": write it without quotes",
            "tests/fixtures/invalid/quoted-scalars.yaml:25:12: Site/app: spec.suspend: expected `true` or `false`, got the string \"yes\"",
        ],
    );
    let text =
        fs::read_to_string(repo_root().join("tests/fixtures/invalid/quoted-scalars.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let errors: Vec<String> = docs.iter().flat_map(schema_errors).collect();
    assert!(
        errors.iter().any(|e| e.starts_with("/spec/ssh/port:")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.starts_with("/spec/suspend:")),
        "{errors:?}"
    );
}
