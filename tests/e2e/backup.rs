//! Export and import, through the running server and on a stopped database.

use serde_json::{Value, json};

use crate::common::{Binary, binary_config, cli, post, renew, write_config};

/// The file's lines without the header (whose export time differs between runs).
fn body_lines(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let header: Value = serde_json::from_str(&lines.remove(0)).unwrap();
    assert_eq!(header["format"], "liveuser-export");
    lines
}

#[test]
fn export_then_import_into_a_fresh_database_round_trips_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Binary::serve(dir.path(), &binary_config(dir.path()), &[]);
    let config = dir.path().join("liveuser.toml");
    let mut refresh = Vec::new();
    for (code, name) in [("alice", "Alice"), ("bob", "名前"), ("carol", "")] {
        let r = post(
            &server.base,
            "/liveuser/Wx/Login",
            json!({"code": code}),
            None,
        );
        let w = post(
            &server.base,
            "/liveuser/User/AddUser",
            json!({"user": {"name": name, "avatar": "https://a.example/p.png"}}),
            Some(&r.str("access_token")),
        );
        assert_eq!(w.status, 200);
        refresh.push((r.str("uid"), r.str("refresh_token")));
    }
    // A rotated family: the export carries both of its token records.
    let r = post(
        &server.base,
        "/liveuser/Wx/RenewToken",
        json!({"refresh_token": refresh[0].1}),
        None,
    );
    refresh[0].1 = r.str("refresh_token");
    // A record with no login (written by an operator).
    cli(&config, &["user", "put", "ops-only", "--agent", "cli"]).ok();

    let through_api = dir.path().join("api.jsonl");
    let exported = cli(
        &config,
        &[
            "export",
            "--sessions",
            "--out",
            through_api.to_str().unwrap(),
        ],
    );
    exported.ok();
    assert_eq!(
        exported.stderr,
        "exported 4 users, 3 identities, 3 sessions\n"
    );
    assert!(server.terminate().success());
    let direct = dir.path().join("direct.jsonl");
    cli(
        &config,
        &["export", "--sessions", "--out", direct.to_str().unwrap()],
    )
    .ok();
    assert_eq!(
        body_lines(&through_api),
        body_lines(&direct),
        "the same export either way"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&direct).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "an export is private");
    }
    let rotated = std::fs::read_to_string(&direct)
        .unwrap()
        .lines()
        .map(|l| l.matches("\"previous\":{\"hash\":\"").count())
        .sum::<usize>();
    assert_eq!(rotated, 1, "the rotated family's last rotation is exported");

    // Restore into a fresh database, then export it again: every record came back.
    let fresh = tempfile::tempdir().unwrap();
    let fresh_config = write_config(fresh.path());
    let imported = cli(&fresh_config, &["import", direct.to_str().unwrap()]);
    assert_eq!(
        imported.ok(),
        "imported 4 users, 3 identities, 3 sessions\n"
    );
    let again = fresh.path().join("again.jsonl");
    cli(
        &fresh_config,
        &["export", "--sessions", "--out", again.to_str().unwrap()],
    )
    .ok();
    assert_eq!(body_lines(&direct), body_lines(&again));

    // And the restored service works: sessions renew, identities keep their uid.
    let server = Binary::serve(fresh.path(), &binary_config(fresh.path()), &[]);
    for (uid, token) in &refresh {
        let r = post(
            &server.base,
            "/liveuser/Wx/RenewToken",
            json!({"refresh_token": token}),
            None,
        );
        assert_eq!(r.status, 200, "a restored session renews: {}", r.text);
        assert_eq!(&r.str("uid"), uid);
    }
    let r = post(
        &server.base,
        "/liveuser/Wx/Login",
        json!({"code": "bob"}),
        None,
    );
    assert_eq!(
        r.str("uid"),
        refresh[1].0,
        "a restored identity keeps its uid"
    );
    let q = post(
        &server.base,
        "/liveuser/User/QueryUser",
        json!({"uids": [refresh[1].0]}),
        Some(&r.str("access_token")),
    );
    assert_eq!(q.body["users"][0]["name"], "名前");
}

#[test]
fn import_checks_every_line_first_and_writes_nothing_from_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::serve(dir.path(), &binary_config(dir.path()), &[]);
    let config = dir.path().join("liveuser.toml");
    for code in ["a", "b", "c"] {
        post(
            &server.base,
            "/liveuser/Wx/Login",
            json!({"code": code}),
            None,
        );
    }
    let file = dir.path().join("good.jsonl");
    cli(&config, &["export", "--out", file.to_str().unwrap()]).ok();
    drop(server);
    let good = std::fs::read_to_string(&file).unwrap();

    let fresh = tempfile::tempdir().unwrap();
    let fresh_config = write_config(fresh.path());
    let mut lines: Vec<&str> = good.lines().collect();
    let broken_user = lines[3].replace("\"update_at\"", "\"updated\"");
    lines[3] = &broken_user;
    let bad = fresh.path().join("bad.jsonl");
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let r = cli(&fresh_config, &["import", bad.to_str().unwrap()]);
    assert!(r.failed().starts_with("liveuser: line 4: "), "{r:?}");
    let truncated = fresh.path().join("truncated.jsonl");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let r = cli(&fresh_config, &["import", truncated.to_str().unwrap()]);
    assert!(r.failed().contains("line "), "{r:?}");
    // A blank line is named as such, first or further on.
    let blank_first = fresh.path().join("blank-first.jsonl");
    std::fs::write(&blank_first, format!("\n{good}")).unwrap();
    let r = cli(&fresh_config, &["import", blank_first.to_str().unwrap()]);
    assert!(
        r.failed().starts_with("liveuser: line 1: a blank line; "),
        "{r:?}"
    );
    let blank_inside = fresh.path().join("blank-inside.jsonl");
    lines[3] = "";
    std::fs::write(&blank_inside, lines.join("\n")).unwrap();
    let r = cli(&fresh_config, &["import", blank_inside.to_str().unwrap()]);
    assert!(
        r.failed().starts_with("liveuser: line 4: a blank line; "),
        "{r:?}"
    );
    let listed = cli(&fresh_config, &["user", "list"]);
    assert_eq!(
        listed.ok(),
        "UID  NAME  AGENT  AVATAR  UPDATED\n",
        "nothing written"
    );

    cli(&fresh_config, &["import", file.to_str().unwrap()]).ok();
    let again = cli(&fresh_config, &["import", file.to_str().unwrap()]);
    assert!(again.failed().contains("--merge"), "{again:?}");
    let merged = cli(
        &fresh_config,
        &["import", "--merge", file.to_str().unwrap()],
    );
    assert_eq!(merged.ok(), "imported 3 users, 3 identities, 0 sessions\n");
}

#[test]
fn import_into_a_running_server_goes_through_its_admin_api() {
    let source = tempfile::tempdir().unwrap();
    let source_config = write_config(source.path());
    let file = source.path().join("users.jsonl");
    std::fs::write(
        &file,
        "{\"kind\":\"header\",\"format\":\"liveuser-export\",\"version\":1,\"exported_at\":1,\"sessions\":false}\n\
         {\"kind\":\"user\",\"uid\":\"u-1\",\"name\":\"One\",\"agent\":\"\",\"avatar\":\"\",\"update_at\":7}\n\
         {\"kind\":\"end\",\"users\":1,\"identities\":0,\"sessions\":0}\n",
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let server = Binary::serve(dir.path(), &binary_config(dir.path()), &[]);
    let config = dir.path().join("liveuser.toml");
    // A reader asks for u-1 before it exists, so the server has seen it absent.
    let reader = post(
        &server.base,
        "/liveuser/Wx/Login",
        json!({"code": "reader"}),
        None,
    );
    let reader_token = reader.str("access_token");
    let before = post(
        &server.base,
        "/liveuser/User/QueryUser",
        json!({"uids": ["u-1"]}),
        Some(&reader_token),
    );
    assert_eq!(before.body["users"], json!([]));
    let r = cli(
        &config,
        &["-v", "import", "--merge", file.to_str().unwrap()],
    );
    assert_eq!(r.ok(), "imported 1 users, 0 identities, 0 sessions\n");
    assert!(r.stderr.contains("admin API"), "{}", r.stderr);
    // The same file into a database with no server prints the same.
    let direct = cli(
        &source_config,
        &["-v", "import", "--merge", file.to_str().unwrap()],
    );
    assert!(direct.stderr.contains("directly"), "{}", direct.stderr);
    assert_eq!(direct.ok(), r.ok());
    let token = cli(&config, &["token", "mint", "u-1"])
        .ok()
        .trim()
        .to_string();
    let q = post(
        &server.base,
        "/liveuser/User/QueryUser",
        json!({"uids": ["u-1"]}),
        Some(&token),
    );
    assert_eq!(q.body["users"][0]["name"], "One");
    assert_eq!(q.body["users"][0]["update_at"], "7");
    // The imported record is visible to a reader that had seen it absent.
    let after = post(
        &server.base,
        "/liveuser/User/QueryUser",
        json!({"uids": ["u-1"]}),
        Some(&reader_token),
    );
    assert_eq!(after.body["users"][0]["name"], "One", "{}", after.text);
}

#[test]
fn an_import_over_the_limit_is_refused_by_the_running_server_before_it_is_read() {
    use std::io::{Read, Write};
    let app = crate::common::TestApp::spawn();
    let endpoint: Value = serde_json::from_str(
        &std::fs::read_to_string(app.dir.path().join("db.admin-token")).unwrap(),
    )
    .unwrap();
    let token = endpoint["token"].as_str().unwrap();
    // One byte over the 1 GiB the README gives as the running server's bound.
    let declared = (1u64 << 30) + 1;
    let mut stream = std::net::TcpStream::connect(app.admin_addr.unwrap()).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "POST /admin/v1/import?merge=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {declared}\r\n\r\n{{\"kind\":\"header\"}}\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("stop the server"), "{answer}");
}

/// A format-1 export (written before refresh tokens carried their session) imports, and
/// the refresh tokens its clients hold keep working.
#[test]
fn a_format_1_export_imports_and_its_clients_tokens_still_renew() {
    use base64::Engine;
    use sha2::Digest;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    // A format-1 token: 32 random bytes; format 1 stored their SHA-256.
    let (older, current) = ([3u8; 32], [4u8; 32]);
    let legacy = format!("lvrt_{}", b64.encode(current));
    let current_hash = sha2::Sha256::digest(current);
    let older_hash = sha2::Sha256::digest(older);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let session = json!({
        "kind": "session", "sid": "ab".repeat(16), "uid": "u-1",
        "created_at": now - 100, "last_used_at": now - 50,
        "expires_at": now + 10_000, "idle_expires_at": now + 5_000,
        "current": hex(&current_hash),
        "previous": {"hash": hex(&older_hash), "rotated_at": now - 50},
        "tokens": [
            {"hash": hex(&older_hash), "issued_at": now - 100},
            {"hash": hex(&current_hash), "issued_at": now - 50},
        ],
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v1.jsonl");
    std::fs::write(
        &file,
        format!(
            "{}\n{}\n{}\n{}\n{}\n",
            r#"{"kind":"header","format":"liveuser-export","version":1,"exported_at":1,"sessions":true}"#,
            r#"{"kind":"user","uid":"u-1","name":"One","agent":"","avatar":"","update_at":7}"#,
            r#"{"kind":"identity","openid":"o-1","uid":"u-1","unionid":null}"#,
            session,
            r#"{"kind":"end","users":1,"identities":1,"sessions":1}"#,
        ),
    )
    .unwrap();
    let config = write_config(dir.path());
    assert_eq!(
        cli(&config, &["import", file.to_str().unwrap()]).ok(),
        "imported 1 users, 1 identities, 1 sessions\n"
    );
    // The session is now known by the id its token derives.
    let listed = cli(&config, &["session", "list", "--json"]);
    let listed: Value = serde_json::from_str(listed.ok()).unwrap();
    assert_eq!(listed["sessions"][0]["sid"], hex(&current_hash[..16]));

    let server = Binary::serve(dir.path(), &binary_config(dir.path()), &[]);
    let renew = |token: &str| {
        post(
            &server.base,
            "/liveuser/Wx/RenewToken",
            json!({ "refresh_token": token }),
            None,
        )
    };
    // The token before the last rotation of format 1 cannot be recognised any more: it
    // is refused and revokes nothing.
    renew(&format!("lvrt_{}", b64.encode(older))).assert_error(401, "unauthenticated");
    let r = renew(&legacy);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.str("uid"), "u-1");
    let successor = r.str("refresh_token");
    assert_eq!(successor.len(), "lvrt_".len() + 70, "a format-2 successor");
    // A retry of the format-1 token within the grace gets the same successor.
    assert_eq!(renew(&legacy).str("refresh_token"), successor);
    let next = renew(&successor);
    assert_eq!(next.status, 200, "{}", next.text);
}

/// One rule for repeated fields on every path (as the public API refuses them): an import
/// line that gives a field twice is refused with its line number and the field's name,
/// whichever value a parser would have kept, and nothing of the file is written.
#[test]
fn an_import_line_that_gives_a_field_twice_is_refused_naming_the_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (current, previous) = ("11".repeat(32), "22".repeat(32));
    let lines = [
        r#"{"kind":"header","format":"liveuser-export","version":2,"exported_at":1,"sessions":true}"#.to_string(),
        r#"{"kind":"user","uid":"u-1","name":"One","agent":"","avatar":"","update_at":7}"#.to_string(),
        r#"{"kind":"identity","openid":"o-1","uid":"u-1","unionid":null}"#.to_string(),
        format!(
            r#"{{"kind":"session","sid":"{}","uid":"u-1","created_at":{},"last_used_at":{},"expires_at":{},"idle_expires_at":{},"generation":1,"current":"{current}","previous":{{"hash":"{previous}","rotated_at_ms":{}}}}}"#,
            "ab".repeat(16),
            now - 100,
            now - 50,
            now + 10_000,
            now + 5_000,
            (now - 50) * 1000,
        ),
        r#"{"kind":"end","users":1,"identities":1,"sessions":1}"#.to_string(),
    ];
    let previous_hash = format!(r#""hash":"{previous}""#);
    let previous_twice = format!(r#""hash":"{current}","hash":"{previous}""#);
    // (line number, the text in it, what it becomes, the field given twice)
    let cases = [
        (1, r#""version":2"#, r#""version":1,"version":2"#, "version"),
        (2, r#""name":"One""#, r#""name":"One","name":"Two""#, "name"),
        (
            2,
            r#""kind":"user""#,
            r#""kind":"user","kind":"user""#,
            "kind",
        ),
        (3, r#""uid":"u-1""#, r#""uid":"u-1","uid":"u-2""#, "uid"),
        (
            4,
            r#""generation":1"#,
            r#""generation":1,"generation":1"#,
            "generation",
        ),
        (4, &previous_hash, &previous_twice, "hash"),
        (5, r#""users":1"#, r#""users":1,"users":1"#, "users"),
    ];
    let file = dir.path().join("import.jsonl");
    for (n, text, twice, field) in cases {
        let mut edited = lines.clone();
        assert!(edited[n - 1].contains(text), "{text} is on line {n}");
        edited[n - 1] = edited[n - 1].replacen(text, twice, 1);
        std::fs::write(&file, edited.join("\n") + "\n").unwrap();
        let r = cli(&config, &["import", file.to_str().unwrap()]);
        let line = r.failed();
        assert!(
            line.starts_with(&format!("liveuser: line {n}: "))
                && line.contains(&format!("duplicate field `{field}`")),
            "{twice}: {line}"
        );
    }
    // Nothing was written (an import without --merge needs an empty database): the file
    // with no field repeated imports.
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    assert_eq!(
        cli(&config, &["import", file.to_str().unwrap()]).ok(),
        "imported 1 users, 1 identities, 1 sessions\n"
    );
    let listed = cli(&config, &["--json", "user", "list"]);
    let listed: Value = serde_json::from_str(listed.ok()).unwrap();
    assert_eq!(listed["users"][0]["name"], "One");
}

#[test]
fn a_moved_session_is_still_revoked_by_a_token_two_rotations_old() {
    // A family rotated twice, and a second user's session, exported with sessions.
    let source = tempfile::tempdir().unwrap();
    let source_config = write_config(source.path());
    let mut server = Binary::serve(source.path(), &binary_config(source.path()), &[]);
    let login = |code: &str| {
        post(
            &server.base,
            "/liveuser/Wx/Login",
            json!({"code": code}),
            None,
        )
    };
    let mut hank = vec![login("hank").str("refresh_token")];
    for _ in 0..2 {
        let r = renew(&server.base, hank.last().unwrap());
        assert_eq!(r.status, 200, "{}", r.text);
        hank.push(r.str("refresh_token"));
    }
    let ivy = login("ivy").str("refresh_token");
    assert!(server.terminate().success());
    let file = source.path().join("move.jsonl");
    cli(
        &source_config,
        &["export", "--sessions", "--out", file.to_str().unwrap()],
    )
    .ok();

    // Into a stopped database, and through a running server on an empty one.
    for running in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path());
        let serve = || Binary::serve(dir.path(), &binary_config(dir.path()), &[]);
        let server = if running {
            let server = serve();
            cli(&config, &["import", file.to_str().unwrap()]).ok();
            server
        } else {
            cli(&config, &["import", file.to_str().unwrap()]).ok();
            serve()
        };
        // The oldest token is reuse: refused, and its family with it.
        assert_eq!(
            renew(&server.base, &hank[0]).status,
            401,
            "running: {running}"
        );
        assert_eq!(
            renew(&server.base, &hank[2]).status,
            401,
            "running: {running}: the family is revoked"
        );
        // The other session renews, and so do the tokens it is given.
        let r = renew(&server.base, &ivy);
        assert_eq!(r.status, 200, "running: {running}: {}", r.text);
        assert_eq!(renew(&server.base, &r.str("refresh_token")).status, 200);
    }
}

/// An import once adopted the header's refresh key whatever the file held: a crafted file
/// of one user with `"sessions": false` replaced the key of an empty database, so whoever
/// wrote it knew the key that tags the tokens of every session opened afterwards.
#[test]
fn only_a_file_with_sessions_brings_its_refresh_key_into_an_empty_database() {
    use liveuser::token::{RefreshKey, RefreshToken};
    let crafted = [0x5a_u8; 32];
    let hex: String = crafted.iter().map(|b| format!("{b:02x}")).collect();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let file = |name: &str, sessions: bool| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "{{\"kind\":\"header\",\"format\":\"liveuser-export\",\"version\":2,\"exported_at\":1,\"sessions\":{sessions},\"refresh_key\":\"{hex}\"}}\n\
                 {{\"kind\":\"user\",\"uid\":\"u-1\",\"name\":\"\",\"agent\":\"\",\"avatar\":\"\",\"update_at\":1}}\n\
                 {{\"kind\":\"end\",\"users\":1,\"identities\":0,\"sessions\":0}}\n"
            ),
        )
        .unwrap();
        path
    };
    let without = file("without-sessions.jsonl", false);
    let refused = cli(&config, &["import", without.to_str().unwrap()]);
    let line = refused.failed();
    assert!(
        line.contains("line 1: refresh_key comes only with sessions"),
        "{line}"
    );
    // A file that says it has sessions but holds none: imported, and the key, which
    // tagged none of its sessions, is not adopted.
    let empty = file("no-sessions.jsonl", true);
    cli(&config, &["import", empty.to_str().unwrap()]).ok();
    let server = Binary::serve(dir.path(), &binary_config(dir.path()), &[]);
    let login = post(
        &server.base,
        "/liveuser/Wx/Login",
        json!({"code": "kim"}),
        None,
    );
    let token = RefreshToken::parse(&login.str("refresh_token")).unwrap();
    assert!(
        !token.is_authentic(&RefreshKey::new(crafted.to_vec())),
        "a new session's token is tagged with the file's key"
    );
}

/// The sessions `session list --json` shows for `uid`.
fn sessions_of(config: &std::path::Path, uid: &str) -> Vec<Value> {
    let listed: Value =
        serde_json::from_str(cli(config, &["session", "list", "--uid", uid, "--json"]).ok())
            .unwrap();
    listed["sessions"].as_array().unwrap().clone()
}

/// A merge once wrote every session of the file over the stored one, as active: a
/// family revoked since the export (for reuse, perhaps) came back to life, and one
/// renewed since was rolled back to a token its client had already spent.
#[test]
fn a_merge_never_brings_a_revoked_session_back_or_rolls_a_renewed_one_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::serve(dir.path(), &binary_config(dir.path()), &[]);
    let config = dir.path().join("liveuser.toml");
    let login = |code: &str| {
        post(
            &server.base,
            "/liveuser/Wx/Login",
            json!({"code": code}),
            None,
        )
    };
    let (amy, bea, cat) = (login("amy"), login("bea"), login("cat"));
    let file = dir.path().join("backup.jsonl");
    cli(
        &config,
        &["export", "--sessions", "--out", file.to_str().unwrap()],
    )
    .ok();

    // After the backup amy renews, bea's session is revoked, cat's is left as it was.
    let amy_next = renew(&server.base, &amy.str("refresh_token"));
    assert_eq!(amy_next.status, 200, "{}", amy_next.text);
    cli(&config, &["session", "revoke", "--uid", &bea.str("uid")]).ok();

    let merged = cli(&config, &["import", "--merge", file.to_str().unwrap()]);
    assert_eq!(merged.ok(), "imported 3 users, 3 identities, 3 sessions\n");
    // bea's family stays revoked: the token the file knew as current is refused.
    renew(&server.base, &bea.str("refresh_token")).assert_error(401, "unauthenticated");
    assert_eq!(sessions_of(&config, &bea.str("uid"))[0]["state"], "revoked");
    // amy's session stays where the renewal left it: the token given since renews.
    let r = renew(&server.base, &amy_next.str("refresh_token"));
    assert_eq!(
        r.status, 200,
        "the renewed session was rolled back: {}",
        r.text
    );
    // cat's, the same in the file as in the database, renews.
    let r = renew(&server.base, &cat.str("refresh_token"));
    assert_eq!(r.status, 200, "{}", r.text);
}

/// A session is one login of one user: a file that names another owner for it (edited,
/// or not an export of this database) must not hand its refresh token that user's account.
#[test]
fn a_merge_never_gives_a_session_to_another_user() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::serve(dir.path(), &binary_config(dir.path()), &[]);
    let config = dir.path().join("liveuser.toml");
    let login = |code: &str| {
        post(
            &server.base,
            "/liveuser/Wx/Login",
            json!({"code": code}),
            None,
        )
    };
    let (fay, gus) = (login("fay"), login("gus"));
    let file = dir.path().join("backup.jsonl");
    cli(
        &config,
        &["export", "--sessions", "--out", file.to_str().unwrap()],
    )
    .ok();
    let fay_sid = sessions_of(&config, &fay.str("uid"))[0]["sid"].clone();
    let edited: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|line| {
            let mut value: Value = serde_json::from_str(line).unwrap();
            if value["kind"] == "session" && value["sid"] == fay_sid {
                value["uid"] = json!(gus.str("uid"));
            }
            value.to_string()
        })
        .collect();
    std::fs::write(&file, edited.join("\n") + "\n").unwrap();

    cli(&config, &["import", "--merge", file.to_str().unwrap()]).ok();
    let of_gus: Vec<Value> = sessions_of(&config, &gus.str("uid"))
        .iter()
        .map(|s| s["sid"].clone())
        .collect();
    assert!(!of_gus.contains(&fay_sid), "{of_gus:?}");
    let r = renew(&server.base, &fay.str("refresh_token"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.str("uid"), fay.str("uid"));
}

/// Without rotation a renewal changes only a session's last use and idle expiry: a merge
/// of a file from before it must not move them back.
#[test]
fn a_merge_keeps_a_session_used_since_the_export_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("{}[token]\nrotation = false\n", binary_config(dir.path()));
    let server = Binary::serve(dir.path(), &toml, &[]);
    let config = dir.path().join("liveuser.toml");
    let dan = post(
        &server.base,
        "/liveuser/Wx/Login",
        json!({"code": "dan"}),
        None,
    );
    let file = dir.path().join("backup.jsonl");
    cli(
        &config,
        &["export", "--sessions", "--out", file.to_str().unwrap()],
    )
    .ok();
    let before = sessions_of(&config, &dan.str("uid"));
    // Times are whole seconds: a renewal in a later second than the export.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(renew(&server.base, &dan.str("refresh_token")).status, 200);
    let used = sessions_of(&config, &dan.str("uid"));
    assert!(
        used[0]["last_used_at"].as_u64() > before[0]["last_used_at"].as_u64(),
        "{used:?}"
    );

    cli(&config, &["import", "--merge", file.to_str().unwrap()]).ok();
    assert_eq!(sessions_of(&config, &dan.str("uid")), used);
}

/// What a merge is for still works: a stale copy of a session takes the newer one.
#[test]
fn a_merge_brings_a_stale_copy_of_a_session_up_to_date() {
    let source = tempfile::tempdir().unwrap();
    let source_config = write_config(source.path());
    let mut server = Binary::serve(source.path(), &binary_config(source.path()), &[]);
    let eve = post(
        &server.base,
        "/liveuser/Wx/Login",
        json!({"code": "eve"}),
        None,
    );
    let export = |name: &str| {
        let file = source.path().join(name);
        cli(
            &source_config,
            &["export", "--sessions", "--out", file.to_str().unwrap()],
        )
        .ok();
        file
    };
    let old = export("old.jsonl");
    let next = renew(&server.base, &eve.str("refresh_token"));
    assert_eq!(next.status, 200, "{}", next.text);
    let new = export("new.jsonl");
    assert!(server.terminate().success());

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    cli(&config, &["import", old.to_str().unwrap()]).ok();
    cli(&config, &["import", "--merge", new.to_str().unwrap()]).ok();
    let server = Binary::serve(dir.path(), &binary_config(dir.path()), &[]);
    let r = renew(&server.base, &next.str("refresh_token"));
    assert_eq!(r.status, 200, "the newer copy was not taken: {}", r.text);
}

// The same tests with PostgreSQL as the backend.
crate::on_postgres!(
    export_then_import_into_a_fresh_database_round_trips_every_record,
    import_checks_every_line_first_and_writes_nothing_from_a_bad_file,
    a_format_1_export_imports_and_its_clients_tokens_still_renew,
    an_import_line_that_gives_a_field_twice_is_refused_naming_the_line_and_field,
    a_moved_session_is_still_revoked_by_a_token_two_rotations_old,
    only_a_file_with_sessions_brings_its_refresh_key_into_an_empty_database,
    a_merge_never_brings_a_revoked_session_back_or_rolls_a_renewed_one_back,
    a_merge_never_gives_a_session_to_another_user,
    a_merge_keeps_a_session_used_since_the_export_as_it_is,
    a_merge_brings_a_stale_copy_of_a_session_up_to_date,
);

#[test]
fn an_export_never_writes_through_a_file_or_link_planted_at_its_temporary_name() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let seed = dir.path().join("seed.jsonl");
    std::fs::write(
        &seed,
        "{\"kind\":\"header\",\"format\":\"liveuser-export\",\"version\":1,\"exported_at\":1,\"sessions\":false}\n\
         {\"kind\":\"user\",\"uid\":\"u1\",\"name\":\"\",\"agent\":\"\",\"avatar\":\"\",\"update_at\":1}\n\
         {\"kind\":\"end\",\"users\":1,\"identities\":0,\"sessions\":0}\n",
    )
    .unwrap();
    cli(&config, &["import", seed.to_str().unwrap()]).ok();

    // Another user pre-created the temporary file, readable and writable by all.
    let out = dir.path().join("out.jsonl");
    let planted = dir.path().join("out.jsonl.partial");
    std::fs::write(&planted, "planted").unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();
    let run = cli(
        &config,
        &["export", "--sessions", "--out", out.to_str().unwrap()],
    );
    let line = run.failed();
    assert!(
        line.contains(&planted.display().to_string()) && line.contains("remove it"),
        "{line}"
    );
    assert_eq!(std::fs::read_to_string(&planted).unwrap(), "planted");
    let mode = std::fs::metadata(&planted).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666, "the planted file was not touched");
    assert!(!out.exists(), "no export appeared");

    // A link planted at the temporary name, pointing at a file of the victim's.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let out = dir.path().join("b2.jsonl");
    let link = dir.path().join("b2.jsonl.partial");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let run = cli(
        &config,
        &["export", "--sessions", "--out", out.to_str().unwrap()],
    );
    let line = run.failed();
    assert!(
        line.contains(&link.display().to_string()) && line.contains("remove it"),
        "{line}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(!out.exists(), "no export appeared");

    // Removed, as the message says, the export goes through, 0600.
    std::fs::remove_file(&link).unwrap();
    cli(&config, &["export", "--out", out.to_str().unwrap()]).ok();
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(body_lines(&out).len(), 2, "the user and the end line");
}
