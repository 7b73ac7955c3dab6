//! Label selectors as `kubectl get -l` takes them, the equality-based kind: requirements
//! separated by commas, all of which must hold: `key=value` (or `key==value`),
//! `key!=value` (also true when the key is absent), `key` (present), `!key` (absent).
//! Set-based requirements (`key in (a,b)`) are refused with a clear message.

use std::collections::BTreeMap;

/// A parsed selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    /// Parses `text`; the error says which requirement is wrong and why.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut requirements = vec![];
        for part in text.split(',').map(str::trim) {
            let requirement = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(key(part, k)?, value_of(part, v)?)
            } else if let Some((k, v)) = part.split_once('=') {
                let v = v.strip_prefix('=').unwrap_or(v);
                Requirement::Equals(key(part, k)?, value_of(part, v)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::Absent(key(part, k)?)
            } else if part.contains([' ', '(']) {
                return Err(format!(
                    "`{part}`: only equality-based requirements are supported (key=value, key!=value, key, !key)"
                ));
            } else {
                Requirement::Exists(key(part, part)?)
            };
            requirements.push(requirement);
        }
        Ok(Selector(requirements))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }
}

/// A label key: `[prefix/]name`, letters, digits, `-`, `_`, `.` (and one `/`).
fn key(part: &str, key: &str) -> Result<String, String> {
    let key = key.trim();
    let name = key.rsplit_once('/').map_or(key, |(_, name)| name);
    let valid = !name.is_empty()
        && key.matches('/').count() <= 1
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(key.to_owned())
    } else {
        Err(format!("`{part}`: `{key}` is not a label key"))
    }
}

/// A label value: empty, or letters, digits, `-`, `_`, `.`.
fn value_of(part: &str, value: &str) -> Result<String, String> {
    let value = value.trim();
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Ok(value.to_owned())
    } else {
        Err(format!("`{part}`: `{value}` is not a label value"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn requirements_all_hold() {
        let web = labels(&[("team", "web"), ("tier", "front")]);
        let core = labels(&[("team", "core")]);
        let none = labels(&[]);
        let cases = [
            ("team=web", [true, false, false]),
            ("team==web", [true, false, false]),
            ("team!=web", [false, true, true]),
            ("team=web,tier=front", [true, false, false]),
            (" team = web , tier ", [true, false, false]),
            ("tier", [true, false, false]),
            ("!tier", [false, true, true]),
            ("team,!tier", [false, true, false]),
            ("example.com/owner", [false, false, false]),
        ];
        for (text, expected) in cases {
            let s = Selector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let got = [&web, &core, &none].map(|l| s.matches(l));
            assert_eq!(got, expected, "{text}");
        }
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        for (text, says) in [
            ("=web", "is not a label key"),
            ("team=web=x", "is not a label value"),
            ("team in (web,core)", "only equality-based"),
            ("team=web,", "is not a label key"),
            ("a/b/c=x", "is not a label key"),
            ("!", "is not a label key"),
        ] {
            let e = Selector::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
