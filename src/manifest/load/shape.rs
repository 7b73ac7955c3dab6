//! The shape check: a document against the schema of its kind (`schema.rs`, the schema the
//! CRDs publish), every violation at once and each located: wrong types, unknown and
//! missing fields, values outside an enum or a duration's grammar, numbers outside their
//! type. The typed parse runs only on a document that passed, so convoy reads every scalar
//! as an API server would (`"22"` is not a port, `"yes"` not a boolean). Bounds narrower
//! than a field's type (`keepReleases` at least 2) are `validate`'s, which says why.

use std::sync::LazyLock;

use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use serde_json::Value as Json;

use super::tree::{Node, Value, child_field};
use crate::manifest::duration::{DURATION_PATTERN, Duration};
use crate::manifest::located::Pos;
use crate::manifest::schema::{document_schema, nullable_as_json_schema};
use crate::manifest::types::Kind;

/// One violation, located in the document; ordered by place.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub pos: Pos,
    /// Dotted path, e.g. `spec.stages[1].group`; `None` for the document itself.
    pub field: Option<String>,
    pub message: String,
}

struct Checker {
    kind: Kind,
    schema: Json,
    validator: Validator,
}

/// Built once: the schemas are fixed at compile time.
static CHECKERS: LazyLock<Vec<Checker>> = LazyLock::new(|| {
    Kind::ALL
        .into_iter()
        .map(|kind| {
            let mut schema = document_schema(kind);
            nullable_as_json_schema(&mut schema);
            let validator =
                jsonschema::validator_for(&schema).expect("the generated schemas compile");
            Checker {
                kind,
                schema,
                validator,
            }
        })
        .collect()
});

/// Every violation of `kind`'s schema in `doc`, in document order.
pub fn check(kind: Kind, doc: &Node) -> Vec<Problem> {
    let checker = CHECKERS
        .iter()
        .find(|c| c.kind == kind)
        .expect("a checker per kind");
    let instance = doc.value.to_json();
    let mut problems = vec![];
    for error in checker.validator.iter_errors(&instance) {
        let Found {
            node,
            field,
            key_pos,
        } = locate(doc, error.instance_path().iter());
        let keyword_at = error.schema_path().as_str();
        let rule = keyword_at
            .rsplit_once('/')
            .and_then(|(parent, _)| checker.schema.pointer(parent))
            .unwrap_or(&Json::Null);
        let at = |message: String| Problem {
            pos: node.pos,
            field: (!field.is_empty()).then(|| field.clone()),
            message,
        };
        match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                for key in unexpected {
                    let written = node.value.key(key);
                    problems.push(Problem {
                        pos: written.map_or(node.pos, |k| k.pos),
                        field: Some(child_field(&field, key)),
                        message: unknown_field(key, rule),
                    });
                }
            }
            ValidationErrorKind::Required { property } => problems.push(Problem {
                pos: key_pos.unwrap_or(node.pos),
                ..at(format!(
                    "missing field `{}`",
                    property.as_str().unwrap_or_default()
                ))
            }),
            ValidationErrorKind::Type { .. } | ValidationErrorKind::AnyOf { .. } => {
                problems.push(at(mismatch(rule, &node.value)))
            }
            ValidationErrorKind::Enum { options } => problems.push(at(format!(
                "expected one of {}, got {}",
                listed(options),
                found(&node.value)
            ))),
            ValidationErrorKind::Pattern { pattern } => {
                problems.push(at(pattern_mismatch(pattern, &node.value)))
            }
            ValidationErrorKind::Minimum { .. } | ValidationErrorKind::Maximum { .. } => {
                if let Some(message) = out_of_range(rule, &node.value) {
                    problems.push(at(message));
                }
            }
            // Counts of items and lengths are rules `validate` states with reasons.
            ValidationErrorKind::MinItems { .. } | ValidationErrorKind::MinLength { .. } => {}
            _ => problems.push(at(error.to_string())),
        }
    }
    // A float the validator refused already (`1.5`) needs no second message at its place.
    let mut floats = vec![];
    floats_for_integers(doc, &checker.schema, "", &mut floats);
    floats.retain(|f| !problems.iter().any(|p| p.pos == f.pos));
    problems.extend(floats);
    // A value can break two keywords saying the same thing (a boolean where an enum of
    // strings belongs fails `type` and `enum`).
    problems.sort();
    problems.dedup();
    problems
}

/// Whole numbers written as floats (`22.0`, `1e3`, and `022`, which YAML 1.2 and 1.1 read
/// differently): a JSON-schema validator takes them for integers, an API server would too,
/// but the typed parse cannot, and guessing is worse than asking for a plain number.
fn floats_for_integers(node: &Node, rule: &Json, field: &str, problems: &mut Vec<Problem>) {
    match &node.value {
        Value::Number(n) if n.is_f64() && takes_integer(rule) => problems.push(Problem {
            pos: node.pos,
            field: (!field.is_empty()).then(|| field.to_string()),
            message: format!(
                "{}, got {}: write a plain whole number (no fraction, exponent or leading zero)",
                expected(rule),
                found(&node.value)
            ),
        }),
        Value::Mapping(entries) => {
            for (key, value) in entries {
                let child = match &rule["properties"][&key.value] {
                    Json::Null => &rule["additionalProperties"],
                    known => known,
                };
                floats_for_integers(value, child, &child_field(field, key), problems);
            }
        }
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                floats_for_integers(item, &rule["items"], &format!("{field}[{i}]"), problems);
            }
        }
        _ => {}
    }
}

fn takes_integer(rule: &Json) -> bool {
    match &rule["type"] {
        Json::String(t) => t == "integer",
        Json::Array(types) => types.iter().any(|t| t == "integer"),
        _ => rule["x-kubernetes-int-or-string"] == true,
    }
}

/// Where a validator's instance path leads.
struct Found<'a> {
    node: &'a Node,
    /// Dotted path, e.g. `spec.stages[0]`.
    field: String,
    /// Where the key that holds the node is written (`spec:`), if a key holds it: what a
    /// "missing field" points at.
    key_pos: Option<Pos>,
}

fn locate<'a>(doc: &'a Node, path: impl Iterator<Item = LocationSegment<'a>>) -> Found<'a> {
    let mut found = Found {
        node: doc,
        field: String::new(),
        key_pos: None,
    };
    for segment in path {
        let (key, field) = match (&segment, &found.node.value) {
            (LocationSegment::Index(i), Value::List(items)) => {
                let Some(item) = items.get(*i) else { break };
                found.node = item;
                found.key_pos = None;
                found.field = format!("{}[{i}]", found.field);
                continue;
            }
            (LocationSegment::Index(i), _) => {
                (i.to_string(), child_field(&found.field, &i.to_string()))
            }
            (LocationSegment::Property(key), _) => {
                (key.to_string(), child_field(&found.field, key))
            }
        };
        let (Some(written), Some(node)) = (found.node.value.key(&key), found.node.value.get(&key))
        else {
            break;
        };
        found.key_pos = Some(written.pos);
        found.node = node;
        found.field = field;
    }
    found
}

/// The type a schema node asks for, in words.
fn expected(rule: &Json) -> String {
    if rule["x-kubernetes-int-or-string"] == true {
        return "expected a whole number or a string".into();
    }
    if rule["pattern"] == DURATION_PATTERN {
        return "expected a duration such as `30s` or `1h30m`".into();
    }
    let kind = match &rule["type"] {
        Json::Array(types) => types.iter().find(|t| *t != "null").cloned(),
        other => Some(other.clone()),
    };
    match kind.as_ref().and_then(Json::as_str) {
        Some("integer") => match format_range(rule) {
            Some((min, max)) => format!("expected a whole number from {min} to {max}"),
            None => "expected a whole number".into(),
        },
        Some("number") => "expected a number".into(),
        Some("boolean") => "expected `true` or `false`".into(),
        Some("string") if rule["enum"].is_array() => {
            format!("expected one of {}", listed(&rule["enum"]))
        }
        Some("string") => "expected a string".into(),
        Some("array") => "expected a list".into(),
        Some("object") => "expected a mapping of `key: value` pairs".into(),
        _ => "unexpected value".into(),
    }
}

/// A value of the wrong type: what was wanted, what was written, and the usual fix when
/// quotes are the whole problem.
fn mismatch(rule: &Json, value: &Value) -> String {
    let want = expected(rule);
    let hint = match value {
        Value::String(s)
            if (want.contains("whole number") && s.trim().parse::<i64>().is_ok())
                || (want.contains("`true`") && matches!(s.as_str(), "true" | "false")) =>
        {
            ": write it without quotes"
        }
        Value::Number(_) | Value::Bool(_) if want == "expected a string" => {
            ": put it in quotes to mean text"
        }
        _ => "",
    };
    format!("{want}, got {}{hint}", found(value))
}

/// What was written, in words.
fn found(value: &Value) -> String {
    match value {
        Value::Null => "nothing (an empty value)".into(),
        Value::Bool(b) => format!("the boolean `{b}`"),
        Value::Number(n) => format!("the number `{n}`"),
        Value::String(s) => format!("the string {s:?}"),
        Value::List(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
    }
}

/// `` `a`, `b` `` from a JSON array of strings.
fn listed(options: &Json) -> String {
    options
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            format!(
                "`{}`",
                o.as_str().map_or_else(|| o.to_string(), str::to_string)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_field(key: &str, rule: &Json) -> String {
    let known: Vec<&str> = rule["properties"]
        .as_object()
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    match crate::manifest::suggest::closest(key, known.iter().copied()) {
        Some(close) => format!("unknown field `{key}`: did you mean `{close}`?"),
        None => format!(
            "unknown field `{key}`, expected one of {}",
            known.join(", ")
        ),
    }
}

fn pattern_mismatch(pattern: &str, value: &Value) -> String {
    let text = value.scalar_text().unwrap_or_default();
    if pattern == DURATION_PATTERN
        && let Err(why) = Duration::parse(&text)
    {
        return why;
    }
    if pattern == crate::manifest::types::PERCENT_PATTERN {
        return format!(
            "expected a count like `2` or a percentage from `0%` to `100%`, got {}",
            found(value)
        );
    }
    format!("{} does not match the pattern `{pattern}`", found(value))
}

/// The range of an integer `format`, e.g. `uint16`.
fn format_range(rule: &Json) -> Option<(i128, i128)> {
    let bits: u32 = match rule["format"].as_str()? {
        "uint8" => 8,
        "uint16" => 16,
        "uint32" => 32,
        "uint64" => 64,
        "int32" => return Some((i32::MIN.into(), i32::MAX.into())),
        "int64" => return Some((i64::MIN.into(), i64::MAX.into())),
        _ => return None,
    };
    Some((0, (1i128 << bits) - 1))
}

/// A bound broken: reported here only when the number does not fit the field's type at all
/// (a negative count, a port above 65535); a bound inside the type's range is a rule
/// `validate` reports with its reason.
fn out_of_range(rule: &Json, value: &Value) -> Option<String> {
    let Value::Number(n) = value else {
        return None;
    };
    let number = n.as_f64()?;
    match format_range(rule) {
        Some((min, max)) if number >= min as f64 && number <= max as f64 => None,
        Some((min, max)) => Some(format!(
            "expected a whole number from {min} to {max}, got {}",
            found(value)
        )),
        None => {
            let bound = match (rule["minimum"].as_f64(), rule["maximum"].as_f64()) {
                (Some(min), _) if number < min => format!("at least {min}"),
                (_, Some(max)) if number > max => format!("at most {max}"),
                _ => return None,
            };
            Some(format!("must be {bound}, got {}", found(value)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(kind: Kind, text: &str) -> Vec<(String, String, String)> {
        let doc: Node = serde_saphyr::from_str(text).unwrap();
        let mut found: Vec<_> = check(kind, &doc)
            .into_iter()
            .map(|p| (p.pos.to_string(), p.field.unwrap_or_default(), p.message))
            .collect();
        found.sort();
        found
    }

    const GROUP: &str =
        "apiVersion: convoy.dev/v1alpha1\nkind: ServerGroup\nmetadata: {name: g}\nspec:\n";

    #[test]
    fn a_valid_document_has_no_problem_and_null_means_unset() {
        let text = format!(
            "{GROUP}  ssh: {{port: ~, user: deploy}}\n  hosts: [{{name: h, address: a}}]\n"
        );
        assert_eq!(problems(Kind::ServerGroup, &text), []);
    }

    #[test]
    fn every_problem_is_found_with_its_place() {
        let text = format!(
            "{GROUP}  ssh: {{port: \"22\", hostKeyChecking: no, conectTimeout: 5s}}\n  hosts: [{{name: h, port: 2.0}}]\n"
        );
        assert_eq!(
            problems(Kind::ServerGroup, &text),
            [
                ("5:15".into(), "spec.ssh.port".into(), "expected a whole number from 0 to 65535, got the string \"22\": write it without quotes".into()),
                ("5:38".into(), "spec.ssh.hostKeyChecking".into(), "expected one of `strict`, `accept-new`, got the boolean `false`".into()),
                ("5:42".into(), "spec.ssh.conectTimeout".into(), "unknown field `conectTimeout`: did you mean `connectTimeout`?".into()),
                ("6:11".into(), "spec.hosts[0]".into(), "missing field `address`".into()),
                ("6:27".into(), "spec.hosts[0].port".into(), "expected a whole number from 0 to 65535, got the number `2.0`: write a plain whole number (no fraction, exponent or leading zero)".into()),
            ]
        );
    }

    #[test]
    fn a_fraction_where_a_count_belongs_is_one_problem() {
        let text = "apiVersion: convoy.dev/v1alpha1\nkind: Site\nmetadata: {name: s}\nspec:\n  release: r\n  path: /p\n  stages: []\n  fetch: {}\n  rollout: {maxFailed: 1.5, maxParallel: 2.5}\n";
        assert_eq!(
            problems(Kind::Site, text),
            [
                (
                    "9:24".into(),
                    "spec.rollout.maxFailed".into(),
                    "expected a whole number or a string, got the number `1.5`".into()
                ),
                (
                    "9:42".into(),
                    "spec.rollout.maxParallel".into(),
                    "expected a whole number from 0 to 4294967295, got the number `2.5`".into()
                ),
            ]
        );
    }

    #[test]
    fn bounds_inside_the_type_are_left_to_validate() {
        let text = "apiVersion: convoy.dev/v1alpha1\nkind: Site\nmetadata: {name: s}\nspec:\n  release: r\n  path: /p\n  stages: []\n  fetch: {}\n  keepReleases: 1\n  rollout: {batch: -1}\n";
        assert_eq!(
            problems(Kind::Site, text),
            [(
                "10:20".into(),
                "spec.rollout.batch".into(),
                "expected a whole number from 0 to 4294967295, got the number `-1`".into()
            )]
        );
    }
}
