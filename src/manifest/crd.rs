//! CustomResourceDefinitions generated from the manifest types, so the same manifests can
//! be applied to a Kubernetes API server later. The schemas are `schema.rs`'s, structural
//! and opened (the API server prunes unknown fields). `crds/` holds the checked-in output; a
//! test fails when it drifts from what this module prints.

use serde_json::{Value, json};

use super::schema::{open_objects, schema_for, spec_schema};
use super::types::*;
use crate::status::SiteStatus;

/// The `openAPIV3Schema` of one kind: the Kubernetes envelope around its spec (and status).
pub fn open_api_schema(kind: Kind) -> Value {
    let (mut spec, description) = spec_schema(kind);
    open_objects(&mut spec);
    let mut properties = json!({
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": spec,
    });
    if kind == Kind::Site {
        let mut status = schema_for::<SiteStatus>();
        open_objects(&mut status);
        properties["status"] = status;
    }
    json!({
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": properties,
    })
}

/// One `apiextensions.k8s.io/v1` CustomResourceDefinition.
pub fn crd(kind: Kind) -> Value {
    let plural = kind.plural();
    let mut version = json!({
        "name": "v1alpha1",
        "served": true,
        "storage": true,
        "schema": {"openAPIV3Schema": open_api_schema(kind)},
    });
    if kind == Kind::Site {
        version["subresources"] = json!({"status": {}});
        version["additionalPrinterColumns"] = json!([
            {"name": "Release", "type": "string", "jsonPath": ".spec.release"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        ]);
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{API_GROUP}")},
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": kind.as_str(),
                "listKind": format!("{}List", kind.as_str()),
                "plural": plural,
                "singular": kind.as_str().to_lowercase(),
            },
            "scope": "Namespaced",
            "versions": [version],
        },
    })
}

/// The checked-in file name of a kind's CRD, e.g. `sites.convoy.dev.yaml`.
pub fn file_name(kind: Kind) -> String {
    format!("{}.{API_GROUP}.yaml", kind.plural())
}

/// A CRD rendered as YAML.
pub fn to_yaml(kind: Kind) -> String {
    serde_saphyr::to_string(&crd(kind)).expect("a JSON value always serializes to YAML")
}

/// Every CRD, as `convoy crds` prints them: one YAML stream, `---` between documents.
pub fn all_yaml() -> String {
    Kind::ALL.map(to_yaml).join("---\n")
}
