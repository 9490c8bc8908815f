//! Output of the admin commands: aligned tables with UTC times for people, JSON for
//! scripts (`--json`). Printing only reads the answer structs, so a command prints the
//! same whichever path produced them.

use std::fmt::Write as _;

use serde::Serialize;

use super::backup::Counts;
use super::ops::{KeyRotated, Minted, RefreshKeyRotated, RevokeOutput, SessionView, UserView};

/// A table: a header row and data rows, columns padded to their widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let _ = write!(text, "{cell:<width$}", width = widths[i]);
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Pretty JSON of an answer, with a final newline.
pub(crate) fn json<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("answers serialize");
    text.push('\n');
    text
}

/// `2026-11-28 15:10:03Z` for Unix seconds (UTC, so output does not depend on the
/// machine's zone).
pub(crate) fn time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Users as a table.
pub(crate) fn users(users: &[UserView]) -> String {
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.uid.clone(),
                u.name.clone(),
                u.agent.clone(),
                u.avatar.clone(),
                time(u.update_at),
            ]
        })
        .collect();
    table(&["UID", "NAME", "AGENT", "AVATAR", "UPDATED"], &rows)
}

/// Sessions as a table; EXPIRES is whichever expiry comes first.
pub(crate) fn sessions(sessions: &[SessionView]) -> String {
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.sid.clone(),
                s.uid.clone(),
                time(s.created_at),
                time(s.last_used_at),
                time(s.expires_at.min(s.idle_expires_at)),
                s.state.clone(),
            ]
        })
        .collect();
    table(
        &["SID", "UID", "CREATED", "LAST USED", "EXPIRES", "STATE"],
        &rows,
    )
}

/// The hint for the next page of a listing.
pub(crate) fn next_page(next: Option<&str>) -> String {
    match next {
        Some(after) => format!("(more: continue with --after {after})\n"),
        None => String::new(),
    }
}

/// What a revocation did.
pub(crate) fn revoked(r: &RevokeOutput) -> String {
    format!(
        "revoked {} session{}; {} had already ended\n",
        r.revoked,
        if r.revoked == 1 { "" } else { "s" },
        r.already_ended
    )
}

/// A minted token: the token alone on stdout, so `$(liveuser token mint UID)` works.
pub(crate) fn minted(m: &Minted) -> String {
    format!("{}\n", m.access_token)
}

/// What a signing-key rotation did: the kids and the times, and with `--now` what
/// skipping the wait costs.
pub(crate) fn key_rotated(k: &KeyRotated) -> String {
    let mut out = if k.now {
        format!(
            "signing key rotated: new kid {} ({}) signs from now ({})\n",
            k.kid,
            k.algorithm,
            time(k.signs_at)
        )
    } else {
        format!(
            "signing key rotated: new kid {} ({}) is published now and signs from {}\n",
            k.kid,
            k.algorithm,
            time(k.signs_at)
        )
    };
    if let Some(previous) = &k.previous_kid {
        out.push_str(&format!(
            "kid {previous} signs until then and verifies the tokens it signed until {}\n",
            time(k.retire_at)
        ));
    }
    if let Some(dropped) = &k.dropped_standby {
        out.push_str(&format!(
            "kid {dropped}, on standby from an earlier rotation, was dropped before it signed\n"
        ));
    }
    if k.now {
        out.push_str(&format!(
            "skipping the wait: verifiers that cached the JWKS in the last {} s refuse tokens \
             of kid {} until they fetch it again\n",
            k.jwks_max_age_secs, k.kid
        ));
    }
    out
}

/// What a refresh-key rotation did.
pub(crate) fn refresh_key_rotated(k: &RefreshKeyRotated) -> String {
    match &k.previous_id {
        Some(previous) => format!(
            "refresh key rotated: new id {}; id {previous} verifies the tokens it tagged until {}\n",
            k.id,
            time(k.retire_at)
        ),
        None => format!("refresh key rotated: new id {}\n", k.id),
    }
}

/// The details of a minted token, for stderr.
pub(crate) fn minted_note(m: &Minted) -> String {
    format!(
        "access token for {} in new session {}, valid until {} (end it early with: liveuser session revoke {})",
        m.uid,
        m.sid,
        time(m.expiry),
        m.sid
    )
}

/// What an export or import held.
pub(crate) fn counts(verb: &str, c: &Counts) -> String {
    format!(
        "{verb} {} users, {} identities, {} sessions\n",
        c.users, c.identities, c.sessions
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(time(0), "1970-01-01 00:00:00Z");
        assert_eq!(time(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(time(1_795_885_150), "2026-11-28 16:59:10Z");
    }

    #[test]
    fn tables_align_columns_and_trim_line_ends() {
        let t = table(
            &["A", "LONG HEADER"],
            &[vec!["xyz".into(), "1".into()], vec!["q".into(), "".into()]],
        );
        assert_eq!(t, "A    LONG HEADER\nxyz  1\nq\n");
    }
}
