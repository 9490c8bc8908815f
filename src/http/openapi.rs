//! The OpenAPI 3.1 document of the public API, served at `GET /liveuser/openapi.json`.
//!
//! Written by hand (the routes are warp filters, which carry no schema), and kept honest
//! two ways: an end-to-end test calls every documented operation on a real server and
//! checks each answer against the documented schema, and `.ci/schemathesis` generates
//! requests from this document (valid and invalid ones) and checks that the server
//! accepts exactly what it describes. So every constraint the decoder enforces is stated
//! here: lengths in characters, the uid alphabet, no control characters, nullable
//! fields, the most uids per QueryUser.

use serde_json::{Value, json};

use super::error::ErrorCode;
use crate::model::{AGENT_MAX, AVATAR_MAX, NAME_MAX, UID_MAX};
use crate::service::CODE_MAX;

/// The codes of the public API's error body, each once, in [`ErrorCode::ALL`]'s order.
fn error_codes() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for code in ErrorCode::ALL.into_iter().filter(|c| c.is_public()) {
        if !names.contains(&code.name()) {
            names.push(code.name());
        }
    }
    names
}

fn error_responses(statuses: &[&str]) -> Value {
    let mut map = serde_json::Map::new();
    for status in statuses {
        map.insert(
            (*status).to_string(),
            json!({
                "description": "An error; `code` says which.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
            }),
        );
    }
    Value::Object(map)
}

fn rpc(
    summary: &str,
    description: &str,
    request: &str,
    response: &str,
    bearer: bool,
    errors: &[&str],
    example: Value,
) -> Value {
    let mut responses = error_responses(errors);
    let mut success = json!({
        "description": "Success.",
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{response}")}}}
    });
    if response == "Grant" {
        // A grant's refresh token is what RenewToken takes: stated as a link, so that
        // generated tests (schemathesis' stateful phase) renew real tokens too.
        success["links"] = json!({"RenewToken": {
            "operationId": "RenewToken",
            "requestBody": {"refresh_token": "$response.body#/refresh_token"}
        }});
    }
    responses
        .as_object_mut()
        .expect("an object")
        .insert("200".into(), success);
    let mut op = json!({
        "summary": summary,
        "description": description,
        "requestBody": {
            "required": true,
            "content": {"application/json": {
                "schema": {"$ref": format!("#/components/schemas/{request}")},
                "example": example
            }}
        },
        "responses": responses,
    });
    let security = if bearer {
        json!([{"bearer": []}])
    } else {
        json!([])
    };
    op.as_object_mut()
        .expect("an object")
        .insert("security".into(), security);
    json!({ "post": op })
}

/// A string of at most `max` characters, none of them a control character (Unicode
/// category Cc, which `char::is_control` refuses).
fn text(max: usize) -> Value {
    json!({"type": "string", "maxLength": max, "pattern": NO_CONTROL})
}

/// Empty, or `http://` or `https://` followed by a host (not a `/`), without control
/// characters or white space (Unicode White_Space, spelled out: `\\s` differs between
/// regex dialects).
const AVATAR: &str = "^(https?://[^/\\u0000-\\u0020\\u007F-\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000][^\\u0000-\\u0020\\u007F-\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]*)?$";

/// No character of Unicode category Cc.
const NO_CONTROL: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// The paths other backends use to check tokens: `/liveuser/Auth/Check` and the JWKS.
fn checking_paths() -> Value {
    json!({
        "/liveuser/Auth/Check": auth_check(),
        "/.well-known/jwks.json": {"get": {
            "operationId": "Jwks",
            "summary": "The public keys that verify access tokens (JWK Set)",
            "description": "The ES256 keys that sign, will sign (published before they do) or still verify tokens in circulation; never a private part, never an HS256 key. `{\"keys\": []}` when the server signs HS256 only. Cache-Control: public, max-age=token.jwks_max_age_secs.",
            "security": [],
            "responses": {"200": {
                "description": "A JWK Set (RFC 7517).",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Jwks"}}}
            }}
        }}
    })
}

/// `/liveuser/Auth/Check`: every method the path item can name, since the check takes
/// any (a proxy forwards its request's method), each with its own operationId.
fn auth_check() -> Value {
    let mut item = serde_json::Map::new();
    for method in [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ] {
        let mut id = String::from("AuthCheck");
        if method != "post" {
            id.push_str(&method[..1].to_uppercase());
            id.push_str(&method[1..]);
        }
        let header =
            |description: &str| json!({"description": description, "schema": {"type": "string"}});
        item.insert(method.into(), json!({
            "operationId": id,
            "summary": "Check an access token (for proxies and backends)",
            "description": "Any method; a request body is ignored. 200 when the token is one every authenticated method accepts, its session live; otherwise 401 unauthenticated. HEAD answers with the headers only. Not rate-limited per address.",
            "security": [{"bearer": []}],
            "responses": {
                "200": {
                    "description": "The token is valid and its session live.",
                    "headers": {
                        "X-Liveuser-Uid": header("The caller's uid."),
                        "X-Liveuser-Session": header("The token's session id (sid).")
                    },
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AuthCheck"}}}
                },
                "401": {
                    "description": "Missing, invalid, expired or revoked access token.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                }
            }
        }));
    }
    Value::Object(item)
}

/// The schemas of the answers of [`checking_paths`].
fn checking_schemas() -> Value {
    json!({
        "AuthCheck": {
            "type": "object", "required": ["uid", "sid", "exp"],
            "properties": {
                "uid": {"$ref": "#/components/schemas/Uid"},
                "sid": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "exp": {"type": "integer", "description": "The token's expiry, Unix seconds."}
            }
        },
        "Jwks": {
            "type": "object", "required": ["keys"],
            "properties": {"keys": {"type": "array", "items": {
                "type": "object",
                "required": ["kty", "crv", "alg", "use", "kid", "x", "y"],
                "properties": {
                    "kty": {"const": "EC"}, "crv": {"const": "P-256"},
                    "alg": {"const": "ES256"}, "use": {"const": "sig"},
                    "kid": {"type": "string"},
                    "x": {"type": "string"}, "y": {"type": "string"}
                },
                "additionalProperties": false
            }}}
        }
    })
}

/// The document; `max_query_uids` is `server.max_query_uids`.
pub(crate) fn document(max_query_uids: usize) -> Value {
    let mut schemas = request_schemas(max_query_uids);
    schemas
        .as_object_mut()
        .expect("an object")
        .append(answer_schemas().as_object_mut().expect("an object"));
    schemas
        .as_object_mut()
        .expect("an object")
        .append(checking_schemas().as_object_mut().expect("an object"));
    let mut paths = paths();
    paths
        .as_object_mut()
        .expect("an object")
        .append(checking_paths().as_object_mut().expect("an object"));
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "liveuser",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "User and login-state service for WeChat mini-programs. Every method is POST with a JSON body (Content-Type: application/json). Unknown request fields are ignored. Strings may not hold control characters; limits count characters.",
            "license": {"name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0"}
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "An access_token from Login or RenewToken, as `Authorization: Bearer <token>`."
                }
            },
            "schemas": schemas
        }
    });
    // Each method's operationId is its name, the last segment of its path (the links
    // refer to operations by it).
    for (path, item) in doc["paths"].as_object_mut().expect("an object") {
        if let Some(op) = item.get_mut("post") {
            let name = path.rsplit('/').next().unwrap_or_default();
            op["operationId"] = json!(name);
        }
    }
    doc
}

/// The four methods, and the three GET endpoints beside them.
fn paths() -> Value {
    json!({
        "/liveuser/Wx/Login": rpc(
            "Log in with a wx.login() code",
            "Exchanges the code with WeChat and opens a new session. Repeating a code within 300 s opens another session for the same user without asking WeChat again.",
            "LoginRequest", "Grant", false,
            &["400", "401", "403", "404", "405", "413", "415", "429", "500", "503"],
            json!({"code": "0a3Bxy000abcDE1"})
        ),
        "/liveuser/Wx/RenewToken": rpc(
            "Renew the access token",
            "Returns a new access token and, with rotation on, a new refresh token that replaces the one sent. A retired refresh token sent again after the grace period revokes the session.",
            "RenewTokenRequest", "Grant", false,
            &["400", "401", "404", "405", "413", "415", "429", "500", "503"],
            json!({"refresh_token": "lvrt_3q2-7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})
        ),
        "/liveuser/User/AddUser": rpc(
            "Add or update a user record",
            "Fields left out keep their stored value; a field present (even \"\") replaces it. An empty or missing uid means the caller; any other uid is permission_denied. update_at is set by the server.",
            "AddUserRequest", "Empty", true,
            &["400", "401", "403", "404", "405", "413", "415", "500", "503"],
            json!({"user": {"name": "Alice", "agent": "iPhone", "avatar": "https://example.com/a.png"}})
        ),
        "/liveuser/User/QueryUser": rpc(
            "Read user records",
            "Returns the records that exist, in the order asked, each uid once; unknown uids are left out.",
            "QueryUserRequest", "QueryUserResponse", true,
            &["400", "401", "404", "405", "413", "415", "500", "503"],
            json!({"uids": ["a91b40478e4c885fea29e6e7"]})
        ),
        "/healthz": get(
            "Liveness",
            "The server is up and its storage open.",
            "application/json",
            json!({"$ref": "#/components/schemas/Health"})
        ),
        "/metrics": get(
            "Prometheus metrics",
            "Prometheus text exposition format.",
            "text/plain",
            json!({"type": "string"})
        ),
        "/liveuser/openapi.json": get(
            "This document",
            "OpenAPI 3.1.",
            "application/json",
            json!({"type": "object"})
        )
    })
}

/// A GET endpoint that needs no token and answers 200 with `schema` as `content_type`.
fn get(summary: &str, description: &str, content_type: &str, schema: Value) -> Value {
    json!({"get": {
        "summary": summary,
        "security": [],
        "responses": {"200": {
            "description": description,
            "content": {content_type: {"schema": schema}}
        }}
    }})
}

/// The schemas of what clients send: the four requests and the parts they share.
fn request_schemas(max_query_uids: usize) -> Value {
    let nullable = |mut schema: Value| {
        schema["type"] = json!(["string", "null"]);
        schema
    };
    json!({
        "Uid": {
            "type": "string", "minLength": 1, "maxLength": UID_MAX,
            "pattern": "^[A-Za-z0-9_.-]+$"
        },
        "LoginRequest": {
            "type": "object", "required": ["code"],
            "properties": {"code": {"type": "string", "minLength": 1, "maxLength": CODE_MAX, "pattern": NO_CONTROL}}
        },
        "RenewTokenRequest": {
            "type": "object", "required": ["refresh_token"],
            "properties": {"refresh_token": {"type": "string"}}
        },
        "UserWrite": {
            "type": "object",
            "description": "A partial UserRecord: fields left out (or null) keep their stored value.",
            "properties": {
                "uid": {
                    "type": ["string", "null"], "maxLength": UID_MAX,
                    "pattern": "^[A-Za-z0-9_.-]*$",
                    "description": "Empty, null or missing: the caller. Any other uid is permission_denied."
                },
                "name": nullable(text(NAME_MAX)),
                "agent": nullable(text(AGENT_MAX)),
                "avatar": {"type": ["string", "null"], "maxLength": AVATAR_MAX, "pattern": AVATAR},
                "update_at": {"description": "Ignored."}
            }
        },
        "AddUserRequest": {
            "type": "object", "required": ["user"],
            "properties": {"user": {"$ref": "#/components/schemas/UserWrite"}}
        },
        "QueryUserRequest": {
            "type": "object", "required": ["uids"],
            "properties": {"uids": {"type": "array", "maxItems": max_query_uids, "items": {"$ref": "#/components/schemas/Uid"}}}
        }
    })
}

/// The schemas of what the server answers: grants, user records, health and errors.
fn answer_schemas() -> Value {
    json!({
        "Grant": {
            "type": "object",
            "required": ["access_token", "refresh_token", "expiry", "uid"],
            "properties": {
                "access_token": {"type": "string", "description": "JWT (ES256, or HS256 with a shared secret); send as a Bearer token."},
                "refresh_token": {
                    "type": "string",
                    "pattern": "^lvrt_([A-Za-z0-9_-]{70}|[A-Za-z0-9_-]{43})$",
                    "description": "70 characters after the prefix; a format-1 token (43) renewed with rotation off comes back as it was sent."
                },
                "expiry": {"type": "integer", "description": "The access token's expiry, Unix seconds."},
                "uid": {"$ref": "#/components/schemas/Uid"}
            }
        },
        "UserRecord": {
            "type": "object",
            "required": ["uid", "name", "agent", "update_at", "avatar"],
            "properties": {
                "uid": {"$ref": "#/components/schemas/Uid"},
                "name": text(NAME_MAX),
                "agent": text(AGENT_MAX),
                "update_at": {"type": "string", "description": "Last write, Unix seconds as a decimal string; set by the server."},
                "avatar": {"type": "string", "maxLength": AVATAR_MAX, "pattern": AVATAR, "description": "Empty or an http(s):// URL."}
            }
        },
        "Empty": {"type": "object", "properties": {}, "additionalProperties": false},
        "QueryUserResponse": {
            "type": "object", "required": ["users"],
            "properties": {"users": {"type": "array", "items": {"$ref": "#/components/schemas/UserRecord"}}}
        },
        "Health": {
            "type": "object", "required": ["status"],
            "properties": {"status": {"type": "string", "const": "ok"}}
        },
        "Error": {
            "type": "object", "required": ["code", "msg"],
            "properties": {
                "code": {"type": "string", "enum": error_codes()},
                "msg": {"type": "string", "description": "A sentence for people; never internals."}
            }
        }
    })
}
