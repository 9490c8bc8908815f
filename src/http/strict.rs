//! What serde_json lets through and liveuser's requests do not, checked the same way on
//! both decoding paths of [`wire`](super::wire) so that they accept and refuse the same
//! bodies.
//!
//! - Nesting: serde_json refuses a value nested [`MAX_DEPTH`] + 1 levels deep (128) when
//!   it builds it, but skips an unknown field's value without counting its depth, and
//!   the typed path skips unknown fields; a body nested 30,000 levels inside an unknown
//!   field passed. [`within_depth`] counts before the typed path runs.

/// The deepest nesting of arrays and objects a request may have, the request object
/// itself being level 1: serde_json refuses one level more.
pub const MAX_DEPTH: usize = 127;

/// Whether `body` nests arrays and objects at most [`MAX_DEPTH`] levels deep. Brackets
/// inside strings do not count. On text that is not JSON the answer means nothing, and
/// the decoders refuse it anyway.
pub fn within_depth(body: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn the_depth_limit_is_serde_json_s() {
        for levels in [1, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 30_000] {
            let text = nested(levels);
            let parses = serde_json::from_str::<serde_json::Value>(&text).is_ok();
            assert_eq!(within_depth(text.as_bytes()), parses, "{levels} levels");
        }
    }

    #[test]
    fn brackets_in_strings_do_not_count() {
        let inside = format!(
            r#"{{"a":"{}","b":"\"{}"}}"#,
            "[".repeat(500),
            "{".repeat(500)
        );
        assert!(within_depth(inside.as_bytes()));
        let escaped_quote = format!(r#"{{"a":"\\","b":{}}}"#, nested(200));
        assert!(!within_depth(escaped_quote.as_bytes()));
    }
}
