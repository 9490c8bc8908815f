//! Request decoding: any body gives a typed request or an `ApiError` with a code from the
//! fixed list — never a panic and never `internal`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use liveuser::fuzzing::{self as wire, ApiError, ErrorCode};

fn check<T>(result: Result<T, ApiError>) {
    if let Err(e) = result {
        assert!(
            matches!(e.code, ErrorCode::Malformed | ErrorCode::InvalidArgument),
            "unexpected code {:?}",
            e.code
        );
        assert!(e.code.status().is_client_error());
    }
}

fuzz_target!(|data: &[u8]| {
    check(wire::login(data));
    check(wire::renew(data));
    check(wire::add_user(data));
    check(wire::query_user(data));
});
