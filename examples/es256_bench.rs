//! Micro-benchmark of the ES256 candidates, to rerun when the choice is questioned: the
//! cost of signing one access token (Login, RenewToken) and of verifying one (a JWKS
//! verifier; liveuser's own checks verify a token once and then serve it from the
//! verified-token cache), with P-256 from
//!
//! - `jsonwebtoken` with its `rust_crypto` backend (the `p256` crate, pure Rust);
//! - `ring` (already in the tree through rustls; assembly field arithmetic on x86_64 and
//!   aarch64);
//!
//! and liveuser's HS256 path (HMAC-SHA-256, pre-keyed) beside them as the baseline.
//!
//! ```text
//! cargo run --release --example es256_bench            # 7 rounds, interleaved
//! cargo run --release --example es256_bench -- 15      # more rounds
//! ```
//!
//! Each round times every variant once, in turn, so machine noise hits them alike; the
//! table shows the median round per variant, in microseconds per call.

use std::hint::black_box;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde_json::{Value, json};
use sha2::Sha256;

/// One variant: its name and a run that returns microseconds per call.
type Variant = (&'static str, Box<dyn Fn() -> f64>);

fn time(n: u32, mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed().as_nanos() as f64 / f64::from(n) / 1000.0
}

fn claims() -> Value {
    json!({
        "iss": "liveuser", "aud": "liveuser", "sub": "a91b40478e4c885fea29e6e7",
        "sid": "0123456789abcdef0123456789abcdef", "iat": 1_800_000_000u64,
        "exp": 1_800_007_200u64
    })
}

/// `header.claims.` as liveuser writes it, ready for the signature.
fn signing_input(alg: &str) -> String {
    let header = format!(r#"{{"typ":"JWT","alg":"{alg}","kid":"0123456789abcdef"}}"#);
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    )
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(7, |r| r.parse().expect("rounds"));
    const N: u32 = 2_000;
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref().to_vec();
    let (x, y) = (
        URL_SAFE_NO_PAD.encode(&public[1..33]),
        URL_SAFE_NO_PAD.encode(&public[33..]),
    );
    let es_input = signing_input("ES256");
    let es_token = {
        let sig = pair.sign(&rng, es_input.as_bytes()).unwrap();
        format!("{es_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    };
    let jwt_encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
    let jwt_decoding = DecodingKey::from_ec_components(&x, &y).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("0123456789abcdef".into());
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["liveuser"]);
    validation.set_issuer(&["liveuser"]);
    validation.validate_exp = false;
    assert!(
        jsonwebtoken::decode::<Value>(&es_token, &jwt_decoding, &validation).is_ok(),
        "ring's token verifies with jsonwebtoken"
    );
    let hs_secret = [7u8; 32];
    let hs_mac = Hmac::<Sha256>::new_from_slice(&hs_secret).unwrap();
    let hs_input = signing_input("HS256");

    let uid = liveuser::model::Uid::parse("a91b40478e4c885fea29e6e7").unwrap();
    let record = liveuser::model::SigningKeyRecord {
        kid: liveuser::token::kid_of_private(liveuser::model::KeyAlgorithm::ES256, pkcs8.as_ref())
            .unwrap(),
        algorithm: liveuser::model::KeyAlgorithm::ES256,
        private: liveuser::secret::Secret::new(pkcs8.as_ref().to_vec()),
        created_at: 0,
        signs_at: 0,
        retires_at: None,
    };
    let es_tokens = liveuser::token::AccessTokens::with_keys(
        liveuser::token::KeyRing::from_records(&[record]).unwrap(),
        "liveuser",
        "liveuser",
        7200,
    );
    let hs_tokens = liveuser::token::AccessTokens::new(&hs_secret, "liveuser", "liveuser", 7200);
    let variants: Vec<Variant> = vec![
        ("issue ES256: liveuser's AccessTokens", {
            let (t, uid) = (es_tokens.clone(), uid.clone());
            Box::new(move || {
                time(N, || {
                    black_box(t.issue(
                        &uid,
                        liveuser::model::Sid([3; 16]),
                        1_800_000_000,
                        u64::MAX,
                    ));
                })
            })
        }),
        ("issue HS256: liveuser's AccessTokens", {
            let (t, uid) = (hs_tokens.clone(), uid.clone());
            Box::new(move || {
                time(N, || {
                    black_box(t.issue(
                        &uid,
                        liveuser::model::Sid([3; 16]),
                        1_800_000_000,
                        u64::MAX,
                    ));
                })
            })
        }),
        ("verify ES256 again: liveuser (cached)", {
            let t = es_tokens.clone();
            let (token, _) = t.issue(&uid, liveuser::model::Sid([3; 16]), 1_800_000_000, u64::MAX);
            Box::new(move || {
                time(N, || {
                    black_box(t.verify(&token, 1_800_000_001).unwrap());
                })
            })
        }),
        ("sign ES256: jsonwebtoken (p256)", {
            let (header, key) = (header.clone(), jwt_encoding.clone());
            Box::new(move || {
                time(N, || {
                    black_box(jsonwebtoken::encode(&header, &claims(), &key).unwrap());
                })
            })
        }),
        ("sign ES256: ring", {
            let (rng, input) = (rng.clone(), es_input.clone());
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap();
            Box::new(move || {
                time(N, || {
                    // The claims are encoded per token in both variants.
                    let input = format!(
                        "{}.{}",
                        input.split('.').next().unwrap(),
                        URL_SAFE_NO_PAD.encode(claims().to_string())
                    );
                    let sig = pair.sign(&rng, input.as_bytes()).unwrap();
                    black_box(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())));
                })
            })
        }),
        ("sign HS256: liveuser (HMAC pre-keyed)", {
            let (mac, input) = (hs_mac.clone(), hs_input.clone());
            Box::new(move || {
                time(N, || {
                    let input = format!(
                        "{}.{}",
                        input.split('.').next().unwrap(),
                        URL_SAFE_NO_PAD.encode(claims().to_string())
                    );
                    let mut m = mac.clone();
                    m.update(input.as_bytes());
                    let sig = m.finalize().into_bytes();
                    black_box(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)));
                })
            })
        }),
        ("verify ES256: jsonwebtoken (p256)", {
            let (token, key, validation) = (es_token.clone(), jwt_decoding.clone(), validation);
            Box::new(move || {
                time(N, || {
                    black_box(jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap());
                })
            })
        }),
        ("verify ES256: ring", {
            let token = es_token.clone();
            let public = public.clone();
            Box::new(move || {
                time(N, || {
                    let (input, sig) = token.rsplit_once('.').unwrap();
                    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
                    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public)
                        .verify(input.as_bytes(), &sig)
                        .unwrap();
                    let payload = input.split('.').nth(1).unwrap();
                    let claims: Value =
                        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
                    black_box(claims);
                })
            })
        }),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..rounds {
        for (i, (_, run)) in variants.iter().enumerate() {
            samples[i].push(run());
        }
    }
    println!(
        "{:<40} {:>10} {:>10} {:>10}",
        "variant", "median µs", "min µs", "max µs"
    );
    for ((name, _), mut s) in variants.iter().zip(samples) {
        s.sort_by(f64::total_cmp);
        println!(
            "{name:<40} {:>10.1} {:>10.1} {:>10.1}",
            s[s.len() / 2],
            s[0],
            s[s.len() - 1]
        );
    }
}
