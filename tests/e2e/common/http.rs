//! The client side: requests sent byte for byte or as a mini-program's JSON calls, their
//! answers ([`Reply`]) with the checks every test makes of an error, and the claims of an
//! access token read as they are ([`jwt_claims`]).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

/// An answer: status and parsed JSON body (`Value::Null` if the body is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub headers: HashMap<String, String>,
}

impl Reply {
    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// A string field of the body.
    pub fn str(&self, field: &str) -> String {
        self.body[field]
            .as_str()
            .unwrap_or_else(|| panic!("no string {field} in {}", self.text))
            .to_string()
    }

    /// Asserts an error answer with this status and code, and the error body shape.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "unexpected answer: {}",
            self.text
        );
        assert!(
            self.body["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "error without msg: {}",
            self.text
        );
        assert_eq!(
            self.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
    }
}

pub fn agent() -> ureq::Agent {
    agent_timing_out(Duration::from_secs(30))
}

/// A client that gives up on a request after `timeout`, and takes any status as an answer.
fn agent_timing_out(timeout: Duration) -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build(),
    )
}

/// Sends one request and collects the answer.
pub fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Reply {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    let request = builder.body(body.to_vec()).unwrap();
    let mut response = agent.run(request).expect("request completes");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        body,
        text,
        headers,
    }
}

/// POSTs a JSON body to `base` + `path` (e.g. a [`Binary`]'s), optionally with a Bearer
/// token.
pub fn post(base: &str, path: &str, body: Value, bearer: Option<&str>) -> Reply {
    post_json(&agent(), &format!("{base}{path}"), &body, bearer)
}

/// `Wx.RenewToken` with `token` on the server at `base`.
pub fn renew(base: &str, token: &str) -> Reply {
    post(
        base,
        "/liveuser/Wx/RenewToken",
        json!({ "refresh_token": token }),
        None,
    )
}

/// A JSON call as a mini-program makes it, for [`TestApp::post`] and [`post`]: the body
/// with its content type, and the access token when there is one.
pub(super) fn post_json(
    agent: &ureq::Agent,
    url: &str,
    body: &Value,
    bearer: Option<&str>,
) -> Reply {
    let mut headers = vec![("content-type", "application/json".to_string())];
    if let Some(token) = bearer {
        headers.push(("authorization", format!("Bearer {token}")));
    }
    send(agent, "POST", url, &headers, body.to_string().as_bytes())
}

/// Logs in at `base` with `code` and asserts success.
#[track_caller]
pub fn login(base: &str, code: &str) -> Reply {
    let r = post(base, "/liveuser/Wx/Login", json!({ "code": code }), None);
    assert_eq!(r.status, 200, "{}", r.text);
    r
}

/// Decodes a JWT's claims without checking anything (to compare with the answer).
pub fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}
