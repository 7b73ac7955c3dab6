//! CustomResourceDefinitions generated from the manifest types, so the same manifests can
//! be applied to a Kubernetes API server later. `crds/` holds the checked-in output; a test
//! fails when it drifts from what this module prints.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};
use serde_json::{Value, json};

use super::types::*;
use crate::status::SiteStatus;

/// OpenAPI v3 as Kubernetes wants it: everything inline, no `$ref`, no `$schema`.
fn schema_for<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let schema: Schema = generator.into_root_schema_for::<T>();
    let mut value = schema.to_value();
    drop_closed_objects(&mut value);
    if let Some(map) = value.as_object_mut() {
        map.remove("title");
        map.remove("$defs");
        map.remove("definitions");
        map.remove("components");
    }
    value
}

/// Kubernetes structural schemas forbid `additionalProperties` beside `properties` (the API
/// server prunes unknown fields instead); convoy's own loader still rejects them.
fn drop_closed_objects(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("additionalProperties") == Some(&Value::Bool(false)) {
                map.remove("additionalProperties");
            }
            map.values_mut().for_each(drop_closed_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_closed_objects),
        _ => {}
    }
}

/// The `openAPIV3Schema` of one kind: the Kubernetes envelope around its spec (and status).
pub fn open_api_schema(kind: Kind) -> Value {
    let (spec, description) = match kind {
        Kind::Site => (
            schema_for::<SiteSpec>(),
            "What runs where, and how a release goes live.",
        ),
        Kind::ServerGroup => (
            schema_for::<ServerGroupSpec>(),
            "A set of hosts and how to reach them.",
        ),
        Kind::Release => (
            schema_for::<ReleaseSpec>(),
            "One version of one site's code.",
        ),
        Kind::Notification => (schema_for::<NotificationSpec>(), "Who hears about what."),
    };
    let mut properties = json!({
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": spec,
    });
    if kind == Kind::Site {
        properties["status"] = schema_for::<SiteStatus>();
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
