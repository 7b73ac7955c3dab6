//! Durations as operators write them in manifests: `30s`, `5m`, `1h30m`, `250ms`.
//! Deliberately a small grammar (no spaces, no fractions, no months) so that what the
//! CRD pattern accepts and what convoy accepts are exactly the same set.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// The pattern every duration string must match; also published in the CRDs.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h|d))+$";

/// A non-negative span of time parsed from a manifest string.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub fn as_std(&self) -> std::time::Duration {
        self.0
    }

    /// Parses `1h30m`-style text; the error says what was wrong in words an operator reads.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty duration: expected e.g. `30s`, `5m`, `1h30m`".into());
        }
        let mut total_ms: u128 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(format!(
                    "invalid duration `{text}`: expected a number followed by a unit (ms, s, m, h, d), e.g. `1h30m`"
                ));
            }
            let number: u128 = rest[..digits]
                .parse()
                .map_err(|_| format!("invalid duration `{text}`: number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit_ms: u128 = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "" if !rest.is_empty() => {
                    let bad = rest.chars().next().unwrap_or(' ');
                    return Err(format!(
                        "invalid duration `{text}`: unexpected {bad:?} (write e.g. `1h30m`, no spaces)"
                    ));
                }
                "" => {
                    return Err(format!(
                        "invalid duration `{text}`: missing unit after {number} (use ms, s, m, h or d)"
                    ));
                }
                other => {
                    return Err(format!(
                        "invalid duration `{text}`: unknown unit `{other}` (use ms, s, m, h or d)"
                    ));
                }
            };
            rest = &rest[unit_len..];
            total_ms = number
                .checked_mul(unit_ms)
                .and_then(|ms| total_ms.checked_add(ms))
                .filter(|ms| *ms <= u64::MAX as u128)
                .ok_or_else(|| format!("invalid duration `{text}`: too large"))?;
        }
        Ok(Duration(std::time::Duration::from_millis(total_ms as u64)))
    }
}

impl fmt::Display for Duration {
    /// Prints the shortest form that parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        if ms > 0 {
            write!(f, "{ms}ms")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Duration::parse(&text).map_err(de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration such as `30s`, `5m` or `1h30m` (units: ms, s, m, h, d)."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_compound_durations() {
        assert_eq!(Duration::parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(Duration::parse("250ms").unwrap().0.as_millis(), 250);
        assert_eq!(Duration::parse("0s").unwrap(), Duration::from_secs(0));
        assert_eq!(Duration::parse("2d").unwrap(), Duration::from_secs(172_800));
    }

    #[test]
    fn rejects_what_the_pattern_rejects() {
        for bad in [
            "",
            "5",
            "5 m",
            "m",
            "1.5s",
            "-1s",
            "5min",
            "10sec",
            "1h 30m",
            "99999999999999999999999d",
        ] {
            assert!(Duration::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            Duration::parse("5min").unwrap_err(),
            "invalid duration `5min`: unknown unit `min` (use ms, s, m, h or d)"
        );
    }

    proptest! {
        #[test]
        fn display_round_trips(ms in 0u64..10_000_000_000) {
            let d = Duration(std::time::Duration::from_millis(ms));
            prop_assert_eq!(Duration::parse(&d.to_string()).unwrap(), d);
        }
    }
}
