//! What serde_json lets through and liveuser's requests do not, checked the same way on
//! both decoding paths of [`wire`](super::wire) so that they accept and refuse the same
//! bodies.
//!
//! - Nesting: serde_json refuses a value nested [`MAX_DEPTH`] + 1 levels deep (128) when
//!   it builds it, but skips an unknown field's value without counting its depth, and
//!   the typed path skips unknown fields; a body nested 30,000 levels inside an unknown
//!   field passed. [`within_depth`] counts before the typed path runs.
//! - Repeated keys: a `Value` keeps the last value of a repeated key, while serde's
//!   derived structs refuse a repeated field. Both paths refuse a repeated field that
//!   liveuser reads (`{"uids":…,"uids":…}`, `{"user":{"name":…,"name":…}}`) as
//!   `invalid_argument` naming it: the typed path gives up on it (serde refuses it), and
//!   the field-by-field path finds it with [`parse`]. A repeated key inside an unknown
//!   field is ignored with the field, on both paths.

use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The deepest nesting of arrays and objects a request may have, the request object
/// itself being level 1: serde_json refuses one level more.
pub const MAX_DEPTH: usize = 127;

/// Whether `body` nests arrays and objects at most [`MAX_DEPTH`] levels deep. Brackets
/// inside strings do not count. On text that is not JSON the answer means nothing, and
/// the decoders refuse it anyway.
pub fn within_depth(body: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Parses `body` into a `Value` (with serde_json's depth limit), and names the first of
/// the `read` fields that appears more than once in its object. Fields are dotted
/// paths from the body: `uids`, `user`, `user.name`.
pub fn parse(body: &[u8], read: &[&str]) -> Result<(Value, Option<String>), serde_json::Error> {
    let repeated = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let node = Node {
        path: Some(String::new()),
        read,
        repeated: &repeated,
    };
    let value = node.deserialize(&mut de)?;
    de.end()?;
    Ok((value, repeated.into_inner()))
}

/// One value being parsed. `path` is its dotted path while it can still hold a field
/// of `read` (the body, `user`); deeper or elsewhere it is `None` and nothing is traced.
struct Node<'r> {
    path: Option<String>,
    read: &'r [&'r str],
    repeated: &'r RefCell<Option<String>>,
}

impl Node<'_> {
    fn child(&self, path: Option<String>) -> Node<'_> {
        Node {
            path,
            read: self.read,
            repeated: self.repeated,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.child(None))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let field = self.path.as_deref().map(|path| {
                if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                }
            });
            let read = field.as_deref().is_some_and(|f| self.read.contains(&f));
            // Descend with a path only into a field that holds fields of `read`.
            let holds = field.clone().filter(|f| {
                self.read.iter().any(|r| {
                    r.strip_prefix(f.as_str())
                        .is_some_and(|r| r.starts_with('.'))
                })
            });
            let value = map.next_value_seed(self.child(holds))?;
            if object.insert(key, value).is_some() && read {
                let mut repeated = self.repeated.borrow_mut();
                if repeated.is_none() {
                    *repeated = field;
                }
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn the_depth_limit_is_serde_json_s() {
        for levels in [1, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 30_000] {
            let text = nested(levels);
            let parses = serde_json::from_str::<serde_json::Value>(&text).is_ok();
            assert_eq!(within_depth(text.as_bytes()), parses, "{levels} levels");
        }
    }

    #[test]
    fn repeated_fields_that_are_read_are_named_and_others_ignored() {
        let read = ["user", "user.name", "uids"];
        let named = |body: &str| parse(body.as_bytes(), &read).unwrap().1;
        assert_eq!(named(r#"{"uids":[1],"uids":[2]}"#).as_deref(), Some("uids"));
        assert_eq!(
            named(r#"{"user":{"name":1,"n\u0061me":2}}"#).as_deref(),
            Some("user.name")
        );
        assert_eq!(named(r#"{"user":{},"user":{}}"#).as_deref(), Some("user"));
        assert_eq!(named(r#"{"user":{"agent":1,"agent":2}}"#), None);
        assert_eq!(
            named(r#"{"x":{"uids":1,"uids":2},"y":[{"user":1,"user":2}]}"#),
            None
        );
        assert_eq!(named(r#"{"uids":[{"uids":1,"uids":2}]}"#), None);
        // The value is what serde_json would build (the last of a repeat wins).
        let (value, _) = parse(br#"{"a":[1,-2,3.5,"s",null,true],"a":{"b":"c"}}"#, &read).unwrap();
        assert_eq!(value, serde_json::json!({"a": {"b": "c"}}));
        assert!(parse(b"{\"a\":1} x", &read).is_err());
        assert!(parse(nested(MAX_DEPTH + 1).as_bytes(), &read).is_err());
        assert!(parse(nested(MAX_DEPTH).as_bytes(), &read).is_ok());
    }

    #[test]
    fn brackets_in_strings_do_not_count() {
        let inside = format!(
            r#"{{"a":"{}","b":"\"{}"}}"#,
            "[".repeat(500),
            "{".repeat(500)
        );
        assert!(within_depth(inside.as_bytes()));
        let escaped_quote = format!(r#"{{"a":"\\","b":{}}}"#, nested(200));
        assert!(!within_depth(escaped_quote.as_bytes()));
    }
}
