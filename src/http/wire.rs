//! JSON in and out: request bodies decoded into typed requests, field by field, so every
//! error names its field; responses encoded as the protocol writes them.
//!
//! One decoder: the body is parsed into a `serde_json::Value` and walked field by field.
//! A typed, borrowing serde decoder tried first used to save about a microsecond per
//! request; measured against the whole request's server CPU it did not pay for a second
//! path that had to accept exactly the same requests (BENCHMARKS.md, "What was tried";
//! `examples/decode_bench.rs` measures it again).
//!
//! A field given twice is refused (see [`strict`]): which of the two counts is where
//! JSON parsers disagree, and a proxy in front may have judged the other one.

use serde::Serialize;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::strict;
use crate::model::{Uid, UserPatch, UserRecord};
use crate::service::Grant;

type Object = Map<String, Value>;

/// Parses a body that must be a JSON object. Not JSON (including invalid UTF-8 and
/// nesting past serde_json's depth limit) is `malformed`; JSON that is not an object, or
/// an object with one of the `read` fields (dotted paths, `user.name`) given twice, is
/// `invalid_argument`.
fn object(body: &[u8], read: &[&str]) -> Result<Object, ApiError> {
    match strict::parse(body, read) {
        Ok((_, Some(field))) => Err(ApiError::invalid_argument(format!(
            "{field} must appear only once"
        ))),
        Ok((Value::Object(map), None)) => Ok(map),
        Ok(_) => Err(ApiError::invalid_argument(
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::malformed(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

/// The fields each request reads, for [`object`]'s check of repeated fields.
const LOGIN_FIELDS: &[&str] = &["code"];
const RENEW_FIELDS: &[&str] = &["refresh_token"];
const ADD_USER_FIELDS: &[&str] = &["user", "user.uid", "user.name", "user.agent", "user.avatar"];
const QUERY_USER_FIELDS: &[&str] = &["uids"];

/// An optional string field; `null` counts as absent.
fn opt_string<'a>(obj: &'a Object, field: &str, path: &str) -> Result<Option<&'a str>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid_argument(format!(
            "{path} must be a string"
        ))),
    }
}

fn req_string<'a>(obj: &'a Object, field: &str) -> Result<&'a str, ApiError> {
    opt_string(obj, field, field)?
        .ok_or_else(|| ApiError::invalid_argument(format!("{field} is required")))
}

/// `Wx.Login`: `{"code": string}`.
pub fn login(body: &[u8]) -> Result<String, ApiError> {
    Ok(req_string(&object(body, LOGIN_FIELDS)?, "code")?.to_string())
}

/// `Wx.RenewToken`: `{"refresh_token": string}`.
pub fn renew(body: &[u8]) -> Result<String, ApiError> {
    Ok(req_string(&object(body, RENEW_FIELDS)?, "refresh_token")?.to_string())
}

/// `User.AddUser`: `{"user": UserRecord}`; an empty or missing uid means "myself", and
/// `update_at` is ignored (the server sets it).
pub fn add_user(body: &[u8]) -> Result<(Option<Uid>, UserPatch), ApiError> {
    let obj = object(body, ADD_USER_FIELDS)?;
    let user = match obj.get("user") {
        Some(Value::Object(user)) => user,
        None | Some(Value::Null) => return Err(ApiError::invalid_argument("user is required")),
        Some(_) => return Err(ApiError::invalid_argument("user must be an object")),
    };
    let uid = opt_string(user, "uid", "user.uid")?;
    let patch = UserPatch {
        name: opt_string(user, "name", "user.name")?.map(str::to_string),
        agent: opt_string(user, "agent", "user.agent")?.map(str::to_string),
        avatar: opt_string(user, "avatar", "user.avatar")?.map(str::to_string),
    };
    // An empty, null or missing uid means the caller.
    let uid = match uid {
        None | Some("") => None,
        Some(uid) => {
            Some(Uid::parse(uid).map_err(|e| ApiError::invalid_argument(format!("user.uid {e}")))?)
        }
    };
    patch
        .validate()
        .map_err(|(field, e)| ApiError::invalid_argument(format!("user.{field} {e}")))?;
    Ok((uid, patch))
}

/// `User.QueryUser`: `{"uids": [string]}`.
pub fn query_user(body: &[u8]) -> Result<Vec<Uid>, ApiError> {
    let obj = object(body, QUERY_USER_FIELDS)?;
    let uids = match obj.get("uids") {
        Some(Value::Array(uids)) => uids,
        None | Some(Value::Null) => return Err(ApiError::invalid_argument("uids is required")),
        Some(_) => {
            return Err(ApiError::invalid_argument(
                "uids must be an array of strings",
            ));
        }
    };
    uids.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => {
                Uid::parse(s).map_err(|e| ApiError::invalid_argument(format!("uids[{i}] {e}")))
            }
            _ => Err(ApiError::invalid_argument(format!(
                "uids[{i}] must be a string"
            ))),
        })
        .collect()
}

#[derive(Serialize)]
struct GrantOut<'a> {
    access_token: &'a str,
    refresh_token: &'a str,
    expiry: u64,
    uid: &'a str,
}

/// Login / RenewToken answer.
pub(crate) fn grant(g: &Grant) -> Vec<u8> {
    to_vec(&GrantOut {
        access_token: &g.access_token,
        refresh_token: &g.refresh_token,
        expiry: g.expiry,
        uid: g.uid.as_str(),
    })
}

#[derive(Serialize)]
struct UserOut<'a> {
    uid: &'a str,
    name: &'a str,
    agent: &'a str,
    #[serde(serialize_with = "decimal_string")]
    update_at: u64,
    avatar: &'a str,
}

/// A number as a JSON string of its decimal digits (the protocol's `update_at`), written
/// without an intermediate allocation.
fn decimal_string<S: serde::Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(n)
}

impl<'a> From<&'a UserRecord> for UserOut<'a> {
    fn from(u: &'a UserRecord) -> Self {
        UserOut {
            uid: u.uid.as_str(),
            name: &u.name,
            agent: &u.agent,
            update_at: u.update_at,
            avatar: &u.avatar,
        }
    }
}

#[derive(Serialize)]
struct UsersOut<'a> {
    users: Vec<UserOut<'a>>,
}

/// QueryUser answer.
pub(crate) fn users(users: &[std::sync::Arc<UserRecord>]) -> Vec<u8> {
    to_vec(&UsersOut {
        users: users.iter().map(|u| UserOut::from(&**u)).collect(),
    })
}

fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("plain structs always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<impl std::fmt::Debug, ApiError>) -> (&'static str, String) {
        let e = r.unwrap_err();
        (e.code.name(), e.msg)
    }

    #[test]
    fn non_json_is_malformed_and_non_objects_are_invalid() {
        assert_eq!(err(login(b"code=1")).0, "malformed");
        assert_eq!(err(login(b"")).0, "malformed");
        assert_eq!(err(login(b"{\"code\": \"\xff\"}")).0, "malformed");
        assert_eq!(err(login(b"[1]")).0, "invalid_argument");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(err(login(deep.as_bytes())).0, "malformed");
    }

    #[test]
    fn wrong_types_name_the_field() {
        assert_eq!(
            err(login(br#"{"code": 5}"#)),
            ("invalid_argument", "code must be a string".into())
        );
        assert_eq!(
            err(login(br#"{}"#)),
            ("invalid_argument", "code is required".into())
        );
        assert_eq!(
            err(add_user(br#"{"user": {"name": 1}}"#)).1,
            "user.name must be a string"
        );
        assert_eq!(
            err(add_user(br#"{"user": []}"#)).1,
            "user must be an object"
        );
        assert_eq!(
            err(query_user(br#"{"uids": ["a", 2]}"#)).1,
            "uids[1] must be a string"
        );
        assert_eq!(
            err(query_user(br#"{"uids": "a"}"#)).1,
            "uids must be an array of strings"
        );
    }

    #[test]
    fn add_user_reads_a_partial_record_and_ignores_update_at() {
        let (uid, patch) =
            add_user(br#"{"user": {"uid": "", "name": "n", "update_at": 99, "x": 1}}"#).unwrap();
        assert_eq!(uid, None);
        assert_eq!(
            patch,
            UserPatch {
                name: Some("n".into()),
                ..Default::default()
            }
        );
    }

    #[test]
    fn escapes_arrays_and_nulls_are_read_as_the_protocol_says() {
        assert_eq!(login(br#"{"code": "a\"b\u00e9"}"#).unwrap(), "a\"bé");
        assert_eq!(
            query_user(br#"{"uids": ["a\u0062"]}"#).unwrap()[0].as_str(),
            "ab"
        );
        // A JSON array would fill a struct positionally in serde; the protocol wants objects.
        assert_eq!(err(login(br#"["c"]"#)).0, "invalid_argument");
        assert_eq!(err(query_user(br#"[["a"]]"#)).0, "invalid_argument");
        // null is "absent" for optional fields and "missing" for required ones.
        let (_, patch) = add_user(br#"{"user": {"name": null, "agent": "x"}}"#).unwrap();
        assert_eq!(
            patch,
            UserPatch {
                agent: Some("x".into()),
                ..Default::default()
            }
        );
        assert_eq!(err(login(br#"{"code": null}"#)).1, "code is required");
        // Limits apply.
        assert_eq!(
            err(add_user(br#"{"user": {"uid": "a b"}}"#)).0,
            "invalid_argument"
        );
        assert_eq!(
            err(query_user(br#"{"uids": [""]}"#)).1,
            "uids[0] must be 1 to 64 characters"
        );
    }

    #[test]
    fn a_field_given_twice_is_refused_by_name() {
        assert_eq!(
            err(query_user(br#"{"uids":["a"],"uids":["b"]}"#)),
            ("invalid_argument", "uids must appear only once".into())
        );
        assert_eq!(
            err(add_user(br#"{"user":{"name":"a","n\u0061me":"b"}}"#)).1,
            "user.name must appear only once"
        );
        assert_eq!(
            login(br#"{"code":"c","x":{"a":1,"a":2}}"#).unwrap(),
            "c",
            "repeats inside unknown fields are ignored"
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert_eq!(
            login(br#"{"code": "c", "extra": {"a": [1]}}"#).unwrap(),
            "c"
        );
    }

    #[test]
    fn user_records_encode_update_at_as_a_string() {
        let user = UserRecord::new(Uid::parse("u").unwrap(), 42);
        let out: Value = serde_json::from_slice(&users(&[user.into()])).unwrap();
        assert_eq!(out["users"][0]["update_at"], "42");
        assert_eq!(out["users"][0]["uid"], "u");
    }
}
