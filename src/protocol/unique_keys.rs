//! A check that a JSON text has no object with the same key twice. serde_json keeps the last of
//! them in a `Value` and derived structs refuse them only where they are structs, so a request's
//! `{"dry_run":true,...,"dry_run":false}` has to be caught before either sees it.

use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Error, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Deserializes any JSON, failing on the first object with a key twice; keeps nothing.
pub struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Walk)
    }
}

struct Walk;

impl<'de> Visitor<'de> for Walk {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: Error>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_i64<E: Error>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_u64<E: Error>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_f64<E: Error>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_str<E: Error>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_unit<E: Error>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                let _: IgnoredAny = map.next_value()?;
                return Err(A::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

#[cfg(test)]
mod tests {
    use super::UniqueKeys;

    #[test]
    fn a_key_twice_is_found_at_any_depth_and_anything_else_passes() {
        let twice = [r#"{"a":1,"a":2}"#, r#"{"x":[{"b":true,"c":null,"b":false}]}"#, r#"[{"k":"v","k":"w"}]"#];
        for text in twice {
            let err = serde_json::from_str::<UniqueKeys>(text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("duplicate key"), "{text}: {err}");
        }
        let once = [r#"{"a":1,"b":{"a":2},"c":[{"a":3},{"a":4}],"d":-1.5e3,"e":"\u00e9"}"#, "null", "[]", "{}"];
        for text in once {
            assert!(serde_json::from_str::<UniqueKeys>(text).is_ok(), "{text}");
        }
    }
}
