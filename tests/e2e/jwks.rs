//! ES256 tokens that the rest of a backend verifies with the public keys alone: the JWKS,
//! a rotation that verifiers survive (the new key published before it signs, the old one
//! published until its last token expires), HS256 deployments publishing nothing and
//! moving to ES256, and the attacks on asymmetric JWTs (RFC 8725), each refused by
//! AddUser, QueryUser and Auth/Check alike.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use liveuser::model::{KeyAlgorithm, SigningKeyRecord};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::{Binary, Reply, TestApp, binary_config, cli, jwt_claims, on_postgres};

fn jwks(app: &TestApp) -> Reply {
    app.raw("GET", "/.well-known/jwks.json", &[], b"")
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

fn header_of(token: &str) -> Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn kid(token: &str) -> String {
    header_of(token)["kid"].as_str().unwrap().to_string()
}

/// Verifies `token` as a backend would, with jsonwebtoken and the JWKS document alone.
fn verify_with(jwks: &Value, token: &str) -> Result<Value, String> {
    let kid = kid(token);
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or_else(|| format!("kid {kid} is not in the JWKS"))?;
    let key =
        DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
            .map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&["liveuser"]);
    validation.set_audience(&["liveuser"]);
    // The test moves the server's clock; the signature and claims are what is checked.
    validation.validate_exp = false;
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

/// A JWT with exactly these header bytes and claims, signed ES256 by `pkcs8`.
fn es256(pkcs8: &[u8], header: &str, claims: &Value) -> String {
    let rng = SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng).unwrap();
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = pair.sign(&rng, input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// A JWT with exactly these header bytes and claims, HMAC-SHA256'd under `key`.
fn hs256(key: &[u8], header: &str, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// The header liveuser writes for `kid`.
fn genuine(alg: &str, kid: &str) -> String {
    format!(r#"{{"typ":"JWT","alg":"{alg}","kid":"{kid}"}}"#)
}

/// A fresh P-256 key of an attacker's, and its public JWK.
fn attacker_key() -> (Vec<u8>, Value) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref();
    let jwk = json!({
        "kty": "EC", "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&public[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&public[33..65]),
    });
    (pkcs8.as_ref().to_vec(), jwk)
}

/// The PEM (SubjectPublicKeyInfo) of a published P-256 JWK: what a key-confusion attack
/// feeds a library that takes "the key" as HMAC bytes.
fn pem_of(jwk: &Value) -> String {
    let mut der = hex_bytes("3059301306072a8648ce3d020106082a8648ce3d030107034200");
    der.push(4);
    der.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
    der.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn stored_keys(app: &TestApp) -> Vec<SigningKeyRecord> {
    app.block_on(liveuser::store::Store::signing_keys(
        app.service().store().as_ref(),
    ))
    .unwrap()
}

fn private_of(app: &TestApp, kid: &str) -> Vec<u8> {
    stored_keys(app)
        .into_iter()
        .find(|k| k.kid == kid)
        .unwrap_or_else(|| panic!("no stored key {kid}"))
        .private
        .expose()
        .clone()
}

fn check(app: &TestApp, token: &str) -> Reply {
    app.raw(
        "GET",
        "/liveuser/Auth/Check",
        &[("authorization", format!("Bearer {token}"))],
        b"",
    )
}

/// Asserts that AddUser, QueryUser and Auth/Check each refuse every case with one and
/// the same message.
#[track_caller]
fn all_refused(app: &TestApp, cases: &[(&str, String)]) {
    let mut messages = std::collections::BTreeSet::new();
    for (name, token) in cases {
        for (via, r) in [
            ("AddUser", app.add_user(token, json!({"name": "x"}))),
            ("QueryUser", app.query(token, &[])),
            ("Auth/Check", check(app, token)),
        ] {
            assert_eq!(
                (r.status, r.code()),
                (401, "unauthenticated"),
                "{via} accepted the attack '{name}': {}",
                r.text
            );
            messages.insert(r.str("msg"));
        }
    }
    assert_eq!(messages.len(), 1, "refusals differ: {messages:?}");
}

#[test]
fn the_jwks_publishes_the_signing_key_without_a_private_part_and_a_standard_library_verifies_with_it()
 {
    let app = TestApp::spawn();
    let r = jwks(&app);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers.get("cache-control").map(String::as_str),
        Some("public, max-age=300")
    );
    let keys = r.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{}", r.text);
    let key = keys[0].as_object().unwrap();
    let mut fields: Vec<&str> = key.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["alg", "crv", "kid", "kty", "use", "x", "y"],
        "never d"
    );
    assert_eq!(
        (&key["kty"], &key["crv"], &key["alg"], &key["use"]),
        (
            &json!("EC"),
            &json!("P-256"),
            &json!("ES256"),
            &json!("sig")
        )
    );

    let login = app.login_ok("alice");
    let token = login.str("access_token");
    assert_eq!(header_of(&token)["alg"], "ES256");
    assert_eq!(kid(&token), key["kid"].as_str().unwrap());
    let claims = verify_with(&r.body, &token).unwrap();
    assert_eq!(claims["sub"], login.str("uid").as_str());
    // A tampered token fails the standard library's check too.
    let mut changed = jwt_claims(&token);
    changed["sub"] = json!("mallory");
    let [h, _, s]: [&str; 3] = token.split('.').collect::<Vec<_>>().try_into().unwrap();
    let tampered = format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(changed.to_string()));
    assert!(verify_with(&r.body, &tampered).is_err());

    // The document follows token.jwks_max_age_secs, and the private key is nowhere.
    let other = TestApp::spawn_with(|c| {
        c.token.jwks_max_age_secs = 60;
        c.token.key_publish_secs = 60;
    });
    assert_eq!(
        jwks(&other)
            .headers
            .get("cache-control")
            .map(String::as_str),
        Some("public, max-age=60")
    );
    let private = private_of(&app, key["kid"].as_str().unwrap());
    let in_text = STANDARD.encode(&private);
    assert!(!r.text.contains(&in_text[..40]));
}

#[test]
fn an_hs256_deployment_publishes_no_key() {
    let configured = TestApp::spawn_with(|c| {
        c.token.secret = liveuser::secret::Secret::new("s".repeat(32));
    });
    let generated = TestApp::spawn_with(|c| c.token.algorithm = KeyAlgorithm::HS256);
    for app in [&configured, &generated] {
        let r = jwks(app);
        assert_eq!((r.status, r.body.clone()), (200, json!({"keys": []})));
        let token = app.login_ok("bob").str("access_token");
        assert_eq!(header_of(&token)["alg"], "HS256");
    }
    // Rotating a generated HS256 key brings another HS256 key, still unpublished.
    generated
        .block_on(
            generated
                .service()
                .rotate_signing_key(&generated.config.token, true),
        )
        .unwrap();
    assert_eq!(jwks(&generated).body, json!({"keys": []}));
}

#[test]
fn a_rotated_in_key_is_published_at_once_signs_after_the_wait_and_the_old_one_leaves_after_its_last_token()
 {
    let app = TestApp::spawn();
    let before = app.login_ok("carol");
    let old_token = before.str("access_token");
    let old_kid = kid(&old_token);
    let rotation = app
        .block_on(app.service().rotate_signing_key(&app.config.token, false))
        .unwrap();
    assert_eq!(rotation.previous_kid.as_deref(), Some(old_kid.as_str()));
    let now = app.service().now();
    assert!(rotation.signs_at >= now + 900 - 1 && rotation.signs_at <= now + 900);

    // Published at once, beside the key that still signs.
    let cached = jwks(&app).body;
    assert_eq!(kids(&cached), [old_kid.clone(), rotation.kid.clone()]);
    let still = app.login_ok("carol").str("access_token");
    assert_eq!(
        kid(&still),
        old_kid,
        "the new key does not sign before its time"
    );

    // At its time it signs, without a restart; a verifier that fetched the JWKS before
    // the switch verifies its tokens, and tokens of the old key keep working.
    app.set_clock(rotation.signs_at - 1);
    assert_eq!(kid(&app.login_ok("carol").str("access_token")), old_kid);
    app.set_clock(rotation.signs_at);
    let fresh = app.login_ok("carol").str("access_token");
    assert_eq!(kid(&fresh), rotation.kid);
    verify_with(&cached, &fresh).unwrap();
    assert_eq!(app.query(&fresh, &[]).status, 200);
    assert_eq!(
        app.query(&still, &[]).status,
        200,
        "the old key's last token"
    );
    assert_eq!(
        kids(&jwks(&app).body),
        [old_kid.clone(), rotation.kid.clone()]
    );

    // The old key is published until its last token has expired, and leaves then.
    assert_eq!(rotation.retires_at, rotation.signs_at + 7200);
    app.set_clock(rotation.retires_at - 1);
    assert_eq!(kids(&jwks(&app).body), [old_kid, rotation.kid.clone()]);
    app.set_clock(rotation.retires_at);
    assert_eq!(kids(&jwks(&app).body), std::slice::from_ref(&rotation.kid));
}

#[test]
fn an_hs256_deployment_moves_to_es256_by_a_rotation_and_its_tokens_verify_until_they_expire() {
    let mut app = TestApp::spawn_with(|c| c.token.algorithm = KeyAlgorithm::HS256);
    let hs = app.login_ok("dora").str("access_token");
    assert_eq!(header_of(&hs)["alg"], "HS256");

    // The default algorithm is ES256, but a database keeps signing with its key: the
    // backends that check HS256 are not switched under them.
    app.config.token.algorithm = KeyAlgorithm::ES256;
    app.restart();
    let again = app.login_ok("dora").str("access_token");
    assert_eq!(header_of(&again)["alg"], "HS256");
    assert_eq!(jwks(&app).body, json!({"keys": []}));

    let rotation = app
        .block_on(app.service().rotate_signing_key(&app.config.token, false))
        .unwrap();
    assert_eq!(rotation.algorithm, KeyAlgorithm::ES256);
    assert_eq!(rotation.previous_algorithm, Some(KeyAlgorithm::HS256));
    assert_eq!(
        kids(&jwks(&app).body),
        std::slice::from_ref(&rotation.kid),
        "only the ES256 key"
    );
    app.set_clock(rotation.signs_at);
    let es = app.login_ok("dora").str("access_token");
    assert_eq!(header_of(&es)["alg"], "ES256");
    for token in [&hs, &again, &es] {
        assert_eq!(app.query(token, &[]).status, 200);
    }
    // The HS256 key retires when its last token expires; its kid verifies nothing then,
    // even with its real secret.
    app.set_clock(rotation.retires_at);
    let secret = private_of(&app, &kid(&hs));
    let mut claims = jwt_claims(&es);
    claims["exp"] = json!(app.service().now() + 60);
    let late = hs256(&secret, &genuine("HS256", &kid(&hs)), &claims);
    all_refused(&app, &[("the retired HS256 key", late)]);
    assert_eq!(app.query(&es, &[]).status, 401, "expired by now");
}

#[test]
fn every_attack_on_asymmetric_tokens_is_refused_by_the_api_and_the_check_alike() {
    let app = TestApp::spawn();
    let retired_kid = kid(&app.login_ok("erin").str("access_token"));
    let retired = private_of(&app, &retired_kid);
    app.block_on(app.service().rotate_signing_key(&app.config.token, true))
        .unwrap();
    // The first key retires one access-token lifetime after the switch.
    app.advance(7200);
    let standby = app
        .block_on(app.service().rotate_signing_key(&app.config.token, false))
        .unwrap();
    let token = app.login_ok("erin").str("access_token");
    let current_kid = kid(&token);
    assert_ne!(current_kid, retired_kid);
    assert_ne!(current_kid, standby.kid);
    let claims = jwt_claims(&token);
    let jwks_text = jwks(&app).text;
    let jwks_doc: Value = serde_json::from_str(&jwks_text).unwrap();
    let published = jwks_doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == current_kid.as_str())
        .unwrap()
        .clone();
    let current = private_of(&app, &current_kid);

    // The controls: this kit, with the real key and header, makes accepted tokens.
    let control = es256(&current, &genuine("ES256", &current_kid), &claims);
    assert_eq!(check(&app, &control).status, 200, "the kit is sound");
    assert_eq!(app.query(&control, &[]).status, 200);

    let (mine, my_jwk) = attacker_key();
    let [_, p, s]: [&str; 3] = token.split('.').collect::<Vec<_>>().try_into().unwrap();
    let b64 = |v: &str| URL_SAFE_NO_PAD.encode(v);
    let none = json!({"typ": "JWT", "alg": "none", "kid": current_kid}).to_string();
    let with = |field: &str, value: Value| {
        let mut h = json!({"typ": "JWT", "alg": "ES256", "kid": current_kid});
        h[field] = value;
        h.to_string()
    };
    let jku = with("jku", json!("https://attacker.example/jwks.json"));
    let x5u = with("x5u", json!("https://attacker.example/cert.pem"));
    let x5c = with("x5c", json!([STANDARD.encode(b"a certificate")]));
    let embedded = {
        let mut h = json!({"typ": "JWT", "alg": "ES256", "jwk": my_jwk});
        h["kid"] = json!(current_kid);
        h.to_string()
    };
    let embedded_no_kid = json!({"typ": "JWT", "alg": "ES256", "jwk": my_jwk}).to_string();
    let hs = genuine("HS256", &current_kid);
    let cases: Vec<(&str, String)> = vec![
        ("alg none, no signature", format!("{}.{p}.", b64(&none))),
        (
            "alg none, the real signature",
            format!("{}.{p}.{s}", b64(&none)),
        ),
        (
            "HS256 keyed with the published JWK",
            hs256(published.to_string().as_bytes(), &hs, &claims),
        ),
        (
            "HS256 keyed with the JWKS document",
            hs256(jwks_text.as_bytes(), &hs, &claims),
        ),
        (
            "HS256 keyed with the public key's PEM",
            hs256(pem_of(&published).as_bytes(), &hs, &claims),
        ),
        (
            "HS256 keyed with the public key's x",
            hs256(published["x"].as_str().unwrap().as_bytes(), &hs, &claims),
        ),
        (
            "another P-256 key under the current kid",
            es256(&mine, &genuine("ES256", &current_kid), &claims),
        ),
        (
            "an embedded jwk of the attacker's",
            es256(&mine, &embedded, &claims),
        ),
        (
            "an embedded jwk, no kid",
            es256(&mine, &embedded_no_kid, &claims),
        ),
        ("a jku of the attacker's", es256(&mine, &jku, &claims)),
        ("an x5u of the attacker's", es256(&mine, &x5u, &claims)),
        ("an x5c of the attacker's", es256(&mine, &x5c, &claims)),
        (
            "a jku, signed with the real key",
            es256(&current, &jku, &claims),
        ),
        (
            "an x5u, signed with the real key",
            es256(&current, &x5u, &claims),
        ),
        (
            "the retired key past its retirement, its real private key",
            es256(&retired, &genuine("ES256", &retired_kid), &claims),
        ),
        (
            "the standby key before it signs, its real private key",
            es256(
                &private_of(&app, &standby.kid),
                &genuine("ES256", &standby.kid),
                &claims,
            ),
        ),
    ];
    all_refused(&app, &cases);

    // The standby token itself is sound: once its key signs it is accepted.
    app.set_clock(standby.signs_at);
    let standby_token = &cases.last().unwrap().1;
    assert_eq!(check(&app, standby_token).status, 200);
}

#[test]
fn the_cli_prints_the_kids_and_times_and_says_what_skipping_the_wait_costs() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path());
    let server = Binary::serve(dir.path(), &config, &[]);
    let config_path = dir.path().join("liveuser.toml");
    let first = crate::common::login(&server.base, "frank").str("access_token");
    let agent = crate::common::agent();
    let published = || {
        crate::common::send(
            &agent,
            "GET",
            &format!("{}/.well-known/jwks.json", server.base),
            &[],
            b"",
        )
        .body
    };

    let out = cli(&config_path, &["token", "rotate-key"]);
    let text = out.ok().to_string();
    let new_kid = text
        .split("new kid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{text}"))
        .to_string();
    assert!(
        text.contains("(ES256) is published now and signs from 20"),
        "{text}"
    );
    assert!(
        text.contains(&format!("kid {} signs until then", kid(&first))),
        "{text}"
    );
    assert!(
        text.contains("verifies the tokens it signed until 20"),
        "{text}"
    );
    // In the running server's JWKS at once (on PostgreSQL, once it is notified).
    let since = Instant::now();
    while !kids(&published()).contains(&new_kid) {
        assert!(since.elapsed() < Duration::from_secs(1), "not published");
        std::thread::sleep(Duration::from_millis(10));
    }
    let again = crate::common::login(&server.base, "frank").str("access_token");
    assert_eq!(kid(&again), kid(&first), "standby: it does not sign yet");

    let out = cli(&config_path, &["token", "rotate-key", "--now"]);
    let text = out.ok().to_string();
    assert!(text.contains("signs from now"), "{text}");
    assert!(
        text.contains(&format!("kid {new_kid}, on standby")),
        "the standby key it replaces: {text}"
    );
    assert!(
        text.contains("verifiers that cached the JWKS in the last 300 s refuse tokens"),
        "{text}"
    );
    let json = cli(&config_path, &["--json", "token", "rotate-key"]);
    let rotated: Value = serde_json::from_str(json.ok()).unwrap();
    for field in ["kid", "previous_kid", "signs_at", "retire_at", "algorithm"] {
        assert!(!rotated[field].is_null(), "{field}: {rotated}");
    }
}

#[test]
fn on_postgres_a_standby_key_is_in_every_instances_jwks_within_a_second_and_all_switch_at_its_time()
{
    on_postgres(|| {
        let a = TestApp::spawn();
        let url = a.config.storage.postgres_url.clone();
        let b = TestApp::spawn_with(|c| c.storage.postgres_url = url);
        let old = kid(&b.login_ok("gus").str("access_token"));
        assert_eq!(
            kids(&jwks(&a).body),
            kids(&jwks(&b).body),
            "one key for both"
        );

        let since = Instant::now();
        let rotation = a
            .block_on(a.service().rotate_signing_key(&a.config.token, false))
            .unwrap();
        while !kids(&jwks(&b).body).contains(&rotation.kid) {
            assert!(
                since.elapsed() < Duration::from_secs(1),
                "not in the other instance's JWKS within a second"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        for app in [&a, &b] {
            app.set_clock(rotation.signs_at - 1);
            assert_eq!(kid(&app.login_ok("gus").str("access_token")), old);
        }
        for app in [&a, &b] {
            app.set_clock(rotation.signs_at);
        }
        let from_a = a.login_ok("gus").str("access_token");
        let from_b = b.login_ok("gus").str("access_token");
        assert_eq!(
            (kid(&from_a), kid(&from_b)),
            (rotation.kid.clone(), rotation.kid.clone())
        );
        assert_eq!(b.query(&from_a, &[]).status, 200);
        assert_eq!(a.query(&from_b, &[]).status, 200);
    });
}

// The same tests with PostgreSQL as the backend.
crate::on_postgres!(
    the_jwks_publishes_the_signing_key_without_a_private_part_and_a_standard_library_verifies_with_it,
    an_hs256_deployment_publishes_no_key,
    a_rotated_in_key_is_published_at_once_signs_after_the_wait_and_the_old_one_leaves_after_its_last_token,
    an_hs256_deployment_moves_to_es256_by_a_rotation_and_its_tokens_verify_until_they_expire,
    every_attack_on_asymmetric_tokens_is_refused_by_the_api_and_the_check_alike,
    the_cli_prints_the_kids_and_times_and_says_what_skipping_the_wait_costs,
);
