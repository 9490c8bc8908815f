//! A fake WeChat: `jscode2session` on a real HTTP server on loopback, answering by the
//! code it is sent (see [`FakeWeChat`]), so the real HTTP client path is exercised.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use warp::Filter;

/// The app secret the fake WeChat expects; tests check it never leaks.
pub const WX_SECRET: &str = "wx-secret-7f3a9c1e5b2d4f60";

/// The appid the fake WeChat expects.
pub const WX_APPID: &str = "wx-test-appid";

/// A fake WeChat `jscode2session` on loopback. The code says how it answers:
///
/// | code                | answer                                              |
/// |---------------------|-----------------------------------------------------|
/// | `ok-<x>`            | openid `openid-<x>`, unionid `union-<x>`            |
/// | `slow-ok-<x>`       | the same after 300 ms                               |
/// | `e<N>`              | `{"errcode": N}`                                    |
/// | `busy-once-<x>`     | -1 on the first call, then like `ok-<x>`            |
/// | `busy-always`       | -1 every time                                       |
/// | `http500`           | HTTP 500                                            |
/// | `garbage`           | 200 with an HTML body                               |
/// | `hang`              | waits 5 s (past any test timeout)                   |
/// | `held-<x>`          | waits until [`FakeWeChat::release`], then `ok-<x>`  |
///
/// Any code may end with `~<tag>`: it answers as the code without the tag, so a test can
/// make every code it sends unique (e.g. to look for it in a log). A wrong appid or
/// secret answers errcode 40125, so a test that logs in proves both were sent. Every call
/// is counted per code, tag included.
pub struct FakeWeChat {
    pub base: String,
    calls: Arc<Mutex<HashMap<String, usize>>>,
    released: tokio::sync::watch::Sender<bool>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeWeChat {
    pub fn start() -> FakeWeChat {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counter = calls.clone();
        let (released, gate) = tokio::sync::watch::channel(false);
        let route = warp::path!("sns" / "jscode2session")
            .and(warp::query::<HashMap<String, String>>())
            .then(move |q: HashMap<String, String>| {
                let counter = counter.clone();
                let mut gate = gate.clone();
                async move {
                    if let Some(x) = q.get("js_code").and_then(|c| c.strip_prefix("held-")) {
                        let x = x.to_string();
                        count(&counter, &format!("held-{x}"));
                        let _ = gate.wait_for(|open| *open).await;
                        let mut q = q;
                        q.insert("js_code".into(), format!("ok-{x}"));
                        return answer(&counter, q).await;
                    }
                    answer(&counter, q).await
                }
            });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(warp::serve(route).incoming(listener).run());
        FakeWeChat {
            base: format!("http://{addr}"),
            calls,
            released,
            _runtime: runtime,
        }
    }

    /// Lets every `held-<x>` call, waiting or future, answer.
    pub fn release(&self) {
        let _ = self.released.send(true);
    }

    /// How many times WeChat was asked about `code`.
    pub fn calls(&self, code: &str) -> usize {
        self.calls.lock().unwrap().get(code).copied().unwrap_or(0)
    }
}

async fn answer(
    counter: &Mutex<HashMap<String, usize>>,
    q: HashMap<String, String>,
) -> warp::reply::Response {
    use warp::Reply as _;
    let tagged = q.get("js_code").cloned().unwrap_or_default();
    let n = count(counter, &tagged);
    let code = tagged
        .split_once('~')
        .map_or(tagged.as_str(), |(code, _)| code);
    let json = |v: Value| warp::reply::json(&v).into_response();
    if q.get("appid").map(String::as_str) != Some(WX_APPID)
        || q.get("secret").map(String::as_str) != Some(WX_SECRET)
        || q.get("grant_type").map(String::as_str) != Some("authorization_code")
    {
        return json(json!({"errcode": 40125, "errmsg": "invalid appsecret"}));
    }
    let ok = |x: &str| {
        json(json!({
            "openid": format!("openid-{x}"),
            "unionid": format!("union-{x}"),
            "session_key": "c2Vzc2lvbi1rZXk="
        }))
    };
    if let Some(x) = code.strip_prefix("ok-") {
        return ok(x);
    }
    if let Some(x) = code.strip_prefix("slow-ok-") {
        tokio::time::sleep(Duration::from_millis(300)).await;
        return ok(x);
    }
    if let Some(x) = code.strip_prefix("busy-once-") {
        if n == 1 {
            return json(json!({"errcode": -1, "errmsg": "system error"}));
        }
        return ok(x);
    }
    match code {
        "busy-always" => json(json!({"errcode": -1, "errmsg": "system error"})),
        "http500" => {
            warp::reply::with_status("oops", warp::http::StatusCode::INTERNAL_SERVER_ERROR)
                .into_response()
        }
        "garbage" => warp::reply::html("<html>not json</html>").into_response(),
        "hang" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            ok("late")
        }
        other => match other.strip_prefix('e').and_then(|n| n.parse::<i64>().ok()) {
            Some(errcode) => json(json!({"errcode": errcode, "errmsg": "error"})),
            None => json(json!({"errcode": 40029, "errmsg": "invalid code"})),
        },
    }
}

fn count(counter: &Mutex<HashMap<String, usize>>, code: &str) -> usize {
    let mut calls = counter.lock().unwrap();
    let n = calls.entry(code.to_string()).or_insert(0);
    *n += 1;
    *n
}
