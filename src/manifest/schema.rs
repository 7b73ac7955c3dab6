//! The schema of every kind, generated from the manifest types and put in the structural
//! form a Kubernetes API server accepts. One source, two readers: the CRDs publish it
//! (`crd.rs`) and the loader checks every document against it before the typed parse
//! (`load/shape.rs`), so convoy and an API server refuse the same shapes. Nothing here
//! reads manifests.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

use super::types::*;

/// The schema of `T`, inline (no `$ref`, no `$schema`) and structural. Objects stay closed
/// (`additionalProperties: false`), as the loader needs; the CRDs open them.
pub fn schema_for<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let schema: Schema = generator.into_root_schema_for::<T>();
    let mut value = schema.to_value();
    if let Some(map) = value.as_object_mut() {
        map.remove("title");
        map.remove("$defs");
        map.remove("definitions");
        map.remove("components");
    }
    make_structural(&mut value);
    value
}

/// The `spec` schema of a kind, and the kind's description.
pub fn spec_schema(kind: Kind) -> (Value, &'static str) {
    match kind {
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
            "One version of one site's code; its name is unique among the Releases of its site.",
        ),
        Kind::Notification => (schema_for::<NotificationSpec>(), "Who hears about what."),
    }
}

/// What the loader checks a whole document against: the envelope, with `metadata` closed
/// too (an API server owns `metadata` and would accept more there; convoy has no use for it).
pub fn document_schema(kind: Kind) -> Value {
    json!({
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": false,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": schema_for::<ObjectMeta>(),
            "spec": spec_schema(kind).0,
        },
    })
}

/// Rewrites what schemars emits into a structural schema: inside `anyOf`/`oneOf` branches
/// an API server refuses `type`, `description`, `nullable` and the like. Children first,
/// so a branch is already rewritten when its parent looks at it. Two shapes occur:
/// an `Option` of a type without a `type` of its own (`anyOf: [T, {enum: [null]}]`), which
/// becomes `T` with `nullable: true`, and an enum with documented variants (`oneOf` of
/// one-value string enums), which becomes one string enum whose description lists them.
pub fn make_structural(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.values_mut().for_each(make_structural);
            for keyword in ["anyOf", "oneOf"] {
                hoist_nullable(map, keyword);
                merge_string_enum(map, keyword);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(make_structural),
        _ => {}
    }
}

/// `anyOf: [T, {enum: [null], nullable: true}]` → `T` + `nullable: true`.
fn hoist_nullable(map: &mut Map<String, Value>, keyword: &str) {
    let Some(Value::Array(branches)) = map.get(keyword) else {
        return;
    };
    let is_null = |b: &Value| b.get("enum") == Some(&json!([null])) || b["type"] == "null";
    if !branches.iter().any(is_null) {
        return;
    }
    let mut rest: Vec<Value> = branches.iter().filter(|b| !is_null(b)).cloned().collect();
    map.remove(keyword);
    map.insert("nullable".into(), Value::Bool(true));
    match rest.len() {
        1 => {
            let Value::Object(inner) = rest.remove(0) else {
                return;
            };
            for (key, value) in inner {
                map.entry(key).or_insert(value);
            }
        }
        _ => drop(map.insert(keyword.into(), Value::Array(rest))),
    }
}

/// `oneOf: [{type: string, enum: [a], description: A}, …]` → `type: string, enum: [a, …]`,
/// each variant's description appended to the node's as "`a`: A".
fn merge_string_enum(map: &mut Map<String, Value>, keyword: &str) {
    let Some(Value::Array(branches)) = map.get(keyword) else {
        return;
    };
    let one_string = |b: &Value| match b.get("enum").or(b.get("const")) {
        Some(Value::Array(values)) => values.len() == 1 && values[0].is_string(),
        Some(Value::String(_)) => true,
        _ => false,
    };
    if branches.is_empty() || !branches.iter().all(one_string) {
        return;
    }
    let mut values = vec![];
    let mut notes = vec![];
    for branch in branches {
        let value = match branch.get("enum") {
            Some(Value::Array(v)) => v[0].clone(),
            _ => branch["const"].clone(),
        };
        if let Some(Value::String(text)) = branch.get("description") {
            notes.push(format!("`{}`: {text}", value.as_str().unwrap_or_default()));
        }
        values.push(value);
    }
    map.remove(keyword);
    map.insert("type".into(), "string".into());
    map.insert("enum".into(), Value::Array(values));
    if !notes.is_empty() {
        let notes = notes.join("\n");
        let description = match map.get("description") {
            Some(Value::String(own)) => format!("{own}\n{notes}"),
            _ => notes,
        };
        map.insert("description".into(), description.into());
    }
}

/// Opens closed objects for a CRD: structural schemas forbid `additionalProperties` beside
/// `properties` (the API server prunes unknown fields instead); convoy's own loader still
/// rejects them.
pub fn open_objects(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("additionalProperties") == Some(&Value::Bool(false)) {
                map.remove("additionalProperties");
            }
            map.values_mut().for_each(open_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(open_objects),
        _ => {}
    }
}

/// OpenAPI's `nullable: true` in JSON Schema's words (`null` among the allowed types), so a
/// JSON-schema validator reads a schema as an API server does.
pub fn nullable_as_json_schema(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.remove("nullable") == Some(Value::Bool(true)) {
                match map.get_mut("type") {
                    Some(Value::String(t)) => {
                        let t = std::mem::take(t);
                        map.insert("type".into(), json!([t, "null"]));
                    }
                    _ => {
                        if let Some(Value::Array(branches)) = map.get_mut("anyOf") {
                            branches.push(json!({"type": "null"}));
                        }
                    }
                }
            }
            map.values_mut().for_each(nullable_as_json_schema);
        }
        Value::Array(items) => items.iter_mut().for_each(nullable_as_json_schema),
        _ => {}
    }
}
