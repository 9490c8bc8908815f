//! Token parsing: refresh tokens and access-token verification never panic, and nothing
//! but a token this key signed verifies.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use liveuser::token::{AccessTokens, KeyRing, RefreshKey, RefreshToken};

static REFRESH_KEY: LazyLock<RefreshKey> = LazyLock::new(|| RefreshKey::new(vec![7; 32]));

static TOKENS: LazyLock<AccessTokens> = LazyLock::new(|| {
    AccessTokens::with_keys(
        KeyRing::new(b"fuzz-current-key-of-32-bytes!!!!")
            .with_previous(b"fuzz-previous-key-of-32-bytes!!!", 2_000_000_000),
        "liveuser",
        "liveuser",
        7200,
    )
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(token) = RefreshToken::parse(text) {
        assert_eq!(
            token.encode(),
            text,
            "a parsed refresh token re-encodes to itself"
        );
        // The fuzzer cannot produce a tag under a key it does not know either.
        assert!(!token.is_authentic(&REFRESH_KEY));
        let _ = (token.sid(), token.hash());
        if let Some(next) = token.successor(&REFRESH_KEY) {
            assert_eq!(next.sid(), token.sid(), "a successor stays in its session");
            assert!(next.is_authentic(&REFRESH_KEY));
        }
    }
    // The fuzzer cannot produce an HMAC under a key it does not know.
    assert!(TOKENS.verify(text, 1_700_000_000).is_err());
});
