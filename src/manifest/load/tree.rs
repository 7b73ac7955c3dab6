//! A document as plain data with the position of every node, typed the way the parser
//! types untyped YAML (`22` is a number, `"22"` a string, `yes` a boolean). The shape check
//! (`shape.rs`) reads it, so every problem of a document is found in one pass where a typed
//! parse stops at the first, and keys written twice are all found with both lines. Nothing
//! here knows the manifest kinds.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value as Json};

use crate::manifest::located::Located;

/// One node of a document.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    List(Vec<Node>),
    /// In document order, keys written twice included.
    Mapping(Vec<(Located<String>, Node)>),
}

/// A node and where it was written.
pub type Node = Located<Value>;

/// A key written a second time in one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The second occurrence.
    pub key: Located<String>,
    /// The line of the first.
    pub first_line: u32,
    /// Dotted path of the key, e.g. `spec.path`.
    pub field: String,
}

impl Value {
    /// The value under `key` of a mapping (the last one, if written twice, as in JSON).
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Value::Mapping(entries) => entries.iter().rev().find(|(k, _)| k.value == key),
            _ => None,
        }
        .map(|(_, v)| v)
    }

    /// The key node of `key` in a mapping (the last one).
    pub fn key(&self, key: &str) -> Option<&Located<String>> {
        match self {
            Value::Mapping(entries) => entries.iter().rev().find(|(k, _)| k.value == key),
            _ => None,
        }
        .map(|(k, _)| k)
    }

    /// The scalar as text, for messages and envelope fields; `None` for collections.
    pub fn scalar_text(&self) -> Option<String> {
        match self {
            Value::Null => Some(String::new()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            Value::String(s) => Some(s.clone()),
            Value::List(_) | Value::Mapping(_) => None,
        }
    }

    /// The same data as JSON, for a schema validator.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Number(n.clone()),
            Value::String(s) => Json::String(s.clone()),
            Value::List(items) => Json::Array(items.iter().map(|i| i.value.to_json()).collect()),
            Value::Mapping(entries) => {
                let mut map = Map::new();
                for (k, v) in entries {
                    map.insert(k.value.clone(), v.value.to_json());
                }
                Json::Object(map)
            }
        }
    }
}

/// `field.key`, or `key` at the top.
pub fn child_field(field: &str, key: &str) -> String {
    if field.is_empty() {
        key.to_string()
    } else {
        format!("{field}.{key}")
    }
}

/// Every key written twice in any mapping of `node`, in document order.
pub fn duplicates(node: &Node) -> Vec<Duplicate> {
    let mut found = vec![];
    collect_duplicates(node, "", &mut found);
    found
}

fn collect_duplicates(node: &Node, field: &str, found: &mut Vec<Duplicate>) {
    match &node.value {
        Value::Mapping(entries) => {
            for (i, (key, value)) in entries.iter().enumerate() {
                let child = child_field(field, &key.value);
                if let Some((first, _)) = entries[..i].iter().find(|(k, _)| k.value == key.value) {
                    found.push(Duplicate {
                        key: key.clone(),
                        first_line: first.pos.line,
                        field: child.clone(),
                    });
                }
                collect_duplicates(value, &child, found);
            }
        }
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_duplicates(item, &format!("{field}[{i}]"), found);
            }
        }
        _ => {}
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    /// Beyond 64 bits no manifest field fits; as a float the schema still sees a number.
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        self.visit_f64(v as f64)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        self.visit_f64(v as f64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("number {v} is not finite")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = vec![];
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = vec![];
        while let Some(key) = map.next_key::<Located<String>>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(Value::Mapping(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::located::Pos;

    fn parse(text: &str) -> Node {
        let mut options = serde_saphyr::Options::default();
        options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
        serde_saphyr::from_str_with_options(text, options).unwrap()
    }

    #[test]
    fn scalars_are_typed_as_written_and_positions_kept() {
        let doc = parse("a: 22\nb: \"22\"\nc: yes\nd: ~\ne: [x, 1.5]\nf: {g: h}\n");
        let json = doc.value.to_json();
        assert_eq!(
            json,
            serde_json::json!({"a": 22, "b": "22", "c": true, "d": null, "e": ["x", 1.5], "f": {"g": "h"}})
        );
        assert_eq!(doc.value.get("b").unwrap().pos, Pos::new(2, 4));
        assert_eq!(doc.value.key("f").unwrap().pos, Pos::new(6, 1));
        assert_eq!(
            doc.value.get("f").unwrap().value.key("g").unwrap().pos,
            Pos::new(6, 5)
        );
    }

    #[test]
    fn every_key_written_twice_is_found_with_both_lines() {
        let doc = parse("a: 1\nb:\n  - c: 1\n    c: 2\na: 3\n");
        let found = duplicates(&doc);
        let shown: Vec<(String, u32, u32)> = found
            .iter()
            .map(|d| (d.field.clone(), d.first_line, d.key.pos.line))
            .collect();
        assert_eq!(
            shown,
            [("b[0].c".to_string(), 3, 4), ("a".to_string(), 1, 5)]
        );
        assert_eq!(
            doc.value.to_json()["a"],
            3,
            "the last one counts, as in JSON"
        );
    }
}
