//! Micro-benchmark of two per-request choices, to rerun when they are questioned:
//!
//! - request decoding: liveuser's one decoder (a `serde_json::Value`, walked field by
//!   field so every error names its field) against a typed, borrowing serde decoder,
//!   the "fast path" liveuser used to try first;
//! - QueryUser's removal of repeated uids: a `HashSet` against a pairwise scan of the
//!   kept uids (the special case liveuser used to take for 32 uids or fewer).
//!
//! ```text
//! cargo run --release --example decode_bench            # 7 rounds, interleaved
//! cargo run --release --example decode_bench -- 15      # more rounds
//! ```
//!
//! Each round times every variant once, in turn, so machine noise hits them alike; the
//! table shows the median round per variant, in nanoseconds per call.

use std::borrow::Cow;
use std::collections::HashSet;
use std::hint::black_box;
use std::time::Instant;

use serde::Deserialize;

#[derive(Deserialize)]
struct QueryUserBody<'a> {
    #[serde(borrow)]
    uids: Vec<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AddUserBody<'a> {
    #[serde(borrow)]
    user: UserBody<'a>,
}

#[derive(Deserialize)]
struct UserBody<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    agent: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    avatar: Option<Cow<'a, str>>,
}

/// The typed decoder's share of QueryUser: parse, then check each uid as liveuser does.
fn typed_query(body: &[u8]) -> usize {
    let req: QueryUserBody = serde_json::from_slice(body).unwrap();
    req.uids
        .iter()
        .filter(|u| {
            !u.is_empty()
                && u.len() <= 64
                && u.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        })
        .count()
}

fn typed_add_user(body: &[u8]) -> usize {
    let req: AddUserBody = serde_json::from_slice(body).unwrap();
    let user = req.user;
    [user.name, user.agent, user.avatar]
        .iter()
        .flatten()
        .map(|s| s.chars().count())
        .sum()
}

fn dedup_hash(uids: &[String]) -> Vec<String> {
    let mut seen = HashSet::with_capacity(uids.len());
    uids.iter().filter(|u| seen.insert(*u)).cloned().collect()
}

fn dedup_pairwise(uids: &[String]) -> Vec<String> {
    let mut unique: Vec<String> = Vec::with_capacity(uids.len());
    for uid in uids {
        if !unique.contains(uid) {
            unique.push(uid.clone());
        }
    }
    unique
}

/// One variant: its name and a run that returns nanoseconds per call.
type Variant = (&'static str, Box<dyn Fn() -> f64>);

fn time(n: u32, mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(7, |r| r.parse().expect("rounds"));
    let uids: Vec<String> = (0..10)
        .map(|i| format!("a91b40478e4c885fea29e6{i:02}"))
        .collect();
    let query = serde_json::to_vec(&serde_json::json!({ "uids": uids })).unwrap();
    let add_user = br#"{"user":{"name":"Alice","agent":"iPhone 15; WeChat 8.0.50","avatar":"https://cdn.example.com/avatars/alice.png"}}"#.to_vec();
    const N: u32 = 200_000;

    let variants: Vec<Variant> = vec![
        ("QueryUser 10 uids: liveuser's decoder", {
            let q = query.clone();
            Box::new(move || {
                time(N, || {
                    black_box(liveuser::fuzzing::query_user(black_box(&q)).unwrap());
                })
            })
        }),
        ("QueryUser 10 uids: typed borrowing decoder", {
            let q = query.clone();
            Box::new(move || {
                time(N, || {
                    black_box(typed_query(black_box(&q)));
                })
            })
        }),
        ("AddUser 3 fields: liveuser's decoder", {
            let a = add_user.clone();
            Box::new(move || {
                time(N, || {
                    black_box(liveuser::fuzzing::add_user(black_box(&a)).unwrap());
                })
            })
        }),
        ("AddUser 3 fields: typed borrowing decoder", {
            let a = add_user.clone();
            Box::new(move || {
                time(N, || {
                    black_box(typed_add_user(black_box(&a)));
                })
            })
        }),
        ("dedup 10 uids: HashSet", {
            let u = uids.clone();
            Box::new(move || {
                time(N, || {
                    black_box(dedup_hash(black_box(&u)));
                })
            })
        }),
        ("dedup 10 uids: pairwise", {
            let u = uids.clone();
            Box::new(move || {
                time(N, || {
                    black_box(dedup_pairwise(black_box(&u)));
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
        "{:<48} {:>12} {:>12} {:>12}",
        "variant", "median ns", "min ns", "max ns"
    );
    for ((name, _), mut s) in variants.iter().zip(samples) {
        s.sort_by(f64::total_cmp);
        println!(
            "{name:<48} {:>12.0} {:>12.0} {:>12.0}",
            s[s.len() / 2],
            s[0],
            s[s.len() - 1]
        );
    }
}
