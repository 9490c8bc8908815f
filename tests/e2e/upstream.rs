//! Upstream faults: a WeChat that hangs, fails or answers garbage holds up only the
//! Logins that wait for it; everything else keeps answering.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use serde_json::json;

use crate::common::TestApp;

#[test]
fn logins_stuck_at_wechat_do_not_hold_up_query_add_or_renew() {
    let app = TestApp::spawn_wechat(|c| c.wx.timeout_ms = 60_000);
    let wx = app.wx.as_ref().unwrap();
    let me = app.login_ok("ok-alice");
    let token = me.str("access_token");
    let uid = me.str("uid");
    let mut refresh = me.str("refresh_token");

    // More stuck Logins than the server has async worker threads (two).
    const STUCK: usize = 8;
    let finished = AtomicUsize::new(0);
    thread::scope(|s| {
        let handles: Vec<_> = (0..STUCK)
            .map(|i| {
                let (app, finished) = (&app, &finished);
                s.spawn(move || {
                    let r = app.login(&format!("held-{i}"));
                    finished.fetch_add(1, Ordering::SeqCst);
                    r
                })
            })
            .collect();
        // Wait until WeChat holds every one of them.
        while (0..STUCK).any(|i| wx.calls(&format!("held-{i}")) == 0) {
            thread::sleep(Duration::from_millis(10));
        }

        // Meanwhile: 30 rounds of everything that does not need WeChat, plus Logins
        // that fail fast at WeChat (garbage, HTTP 500, a rejected code).
        for i in 0..30 {
            let w = app.add_user(&token, json!({ "name": format!("n{i}") }));
            assert_eq!(w.status, 200, "{}", w.text);
            let q = app.query(&token, &[&uid]);
            assert_eq!(q.body["users"][0]["name"], format!("n{i}"));
            let r = app.renew(&refresh);
            assert_eq!(r.status, 200, "{}", r.text);
            refresh = r.str("refresh_token");
            if i % 10 == 0 {
                app.login("garbage").assert_error(503, "unavailable");
                app.login("http500").assert_error(503, "unavailable");
                app.login("e40029").assert_error(401, "unauthenticated");
            }
        }
        assert_eq!(
            finished.load(Ordering::SeqCst),
            0,
            "all of that completed while every held Login was still waiting at WeChat"
        );

        wx.release();
        for h in handles {
            let r = h.join().unwrap();
            assert_eq!(
                r.status, 200,
                "a held Login completes once WeChat answers: {}",
                r.text
            );
        }
    });
}

#[test]
fn with_wechat_unreachable_logins_fail_fast_and_everything_else_works() {
    // A port nothing listens on: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let app = TestApp::spawn_wechat(|c| c.wx.api_base = base);
    // A user who logged in before WeChat went away (a session opened directly).
    let uid = liveuser::model::Uid::parse("u-before-outage").unwrap();
    let grant = app
        .block_on(app.service().open_session(&uid, app.service().now()))
        .unwrap();
    let mut refresh = grant.refresh_token.clone();
    for i in 0..10 {
        app.login(&format!("ok-{i}"))
            .assert_error(503, "unavailable");
        let w = app.add_user(&grant.access_token, json!({ "name": format!("n{i}") }));
        assert_eq!(w.status, 200, "{}", w.text);
        let q = app.query(&grant.access_token, &[uid.as_str()]);
        assert_eq!(q.body["users"][0]["name"], format!("n{i}"));
        let r = app.renew(&refresh);
        assert_eq!(r.status, 200, "{}", r.text);
        refresh = r.str("refresh_token");
    }
}

#[test]
fn at_most_wx_max_concurrent_exchanges_wait_at_wechat_at_once() {
    const BOUND: usize = 2;
    const LOGINS: usize = 6;
    let app = TestApp::spawn_wechat(|c| {
        c.wx.max_concurrent = BOUND;
        c.wx.timeout_ms = 20_000;
    });
    let wx = app.wx.as_ref().unwrap();
    let at_wechat = || {
        (0..LOGINS)
            .map(|i| wx.calls(&format!("held-{i}")))
            .sum::<usize>()
    };
    thread::scope(|s| {
        let handles: Vec<_> = (0..LOGINS)
            .map(|i| {
                let app = &app;
                s.spawn(move || app.login(&format!("held-{i}")))
            })
            .collect();
        while at_wechat() < BOUND {
            thread::sleep(Duration::from_millis(10));
        }
        // Unbounded, the other Logins would reach WeChat within milliseconds.
        thread::sleep(Duration::from_millis(500));
        assert_eq!(at_wechat(), BOUND, "the others wait for a free slot");

        // As the held exchanges end, the waiting Logins take their slots.
        wx.release();
        for h in handles {
            let r = h.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.text);
        }
    });
    assert_eq!(at_wechat(), LOGINS);
}
