//! A field given twice in one request object.
//!
//! A `serde_json::Value` keeps the last value of a repeated key; other JSON parsers
//! (a proxy or gateway in front of liveuser, serde's derived structs) take the first or
//! refuse. So a repeat of a field liveuser reads (`{"uids":…,"uids":…}`,
//! `{"user":{"name":…,"name":…}}`) is refused as `invalid_argument` naming it, whatever
//! the values. [`parse`] builds the `Value` as serde_json would and notes such a repeat.
//! A repeated key inside an unknown field is ignored with the field.

use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `body` into a `Value` (with serde_json's depth limit), and names the first of
/// the `read` fields that appears more than once in its object. Fields are dotted
/// paths from the body: `uids`, `user`, `user.name`.
pub(super) fn parse(
    body: &[u8],
    read: &[&str],
) -> Result<(Value, Option<String>), serde_json::Error> {
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
        // serde_json's depth limit holds: 128 levels are refused, 127 are not.
        assert!(parse(nested(128).as_bytes(), &read).is_err());
        assert!(parse(nested(127).as_bytes(), &read).is_ok());
    }
}
