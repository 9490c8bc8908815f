//! A tiny mini-program stand-in: logs in with a mock code, writes its profile, reads it
//! back and renews its tokens, printing each step.
//!
//! Start the server first (`cargo run --release -- serve`, mock mode), then:
//!
//! ```text
//! cargo run --example client                      # against http://127.0.0.1:8080
//! cargo run --example client -- http://host:port  # elsewhere
//! ```

use serde_json::{Value, json};

fn main() {
    let base = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8080".to_string());
    if let Err(e) = run(&base) {
        eprintln!("client: {e}");
        std::process::exit(1);
    }
}

fn run(base: &str) -> Result<(), String> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let call = |path: &str, body: Value, token: Option<&str>| -> Result<Value, String> {
        let mut request = agent
            .post(&format!("{base}{path}"))
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", &format!("Bearer {token}"));
        }
        let mut response = request
            .send(body.to_string().as_bytes())
            .map_err(|e| format!("{path}: {e} (is the server running at {base}?)"))?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let value: Value = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{path}: HTTP {status}: {value}"));
        }
        Ok(value)
    };
    let field = |v: &Value, name: &str| v[name].as_str().unwrap_or_default().to_string();

    println!("1. Login with mock code \"alice\"");
    let login = call("/liveuser/Wx/Login", json!({"code": "alice"}), None)?;
    let uid = field(&login, "uid");
    let access = field(&login, "access_token");
    println!(
        "   uid = {uid}, access token expires at {}",
        login["expiry"]
    );

    println!("2. AddUser: write my own profile");
    call(
        "/liveuser/User/AddUser",
        json!({"user": {"name": "Alice", "agent": "example client", "avatar": "https://example.com/alice.png"}}),
        Some(&access),
    )?;
    println!("   ok");

    println!("3. QueryUser: read it back");
    let users = call(
        "/liveuser/User/QueryUser",
        json!({"uids": [uid]}),
        Some(&access),
    )?;
    println!("   {}", users["users"][0]);

    println!("4. RenewToken: rotate the refresh token");
    let renewed = call(
        "/liveuser/Wx/RenewToken",
        json!({"refresh_token": field(&login, "refresh_token")}),
        None,
    )?;
    let rotated = field(&renewed, "refresh_token") != field(&login, "refresh_token");
    println!(
        "   new access token expires at {}; refresh token {}",
        renewed["expiry"],
        if rotated {
            "rotated"
        } else {
            "unchanged (rotation off)"
        }
    );

    println!("5. QueryUser with the new access token");
    let again = call(
        "/liveuser/User/QueryUser",
        json!({"uids": [uid]}),
        Some(&field(&renewed, "access_token")),
    )?;
    println!("   name = {}", again["users"][0]["name"]);
    Ok(())
}
