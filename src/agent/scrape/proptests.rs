//! Property tests: no input makes the parser or a scraper panic, and what the
//! parser reads back is what was written, escapes included.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::prom::parse;
use super::tests::FIXTURES;
use super::{Scraper, PRESETS};

/// Text built from the characters the format gives meaning to, so that
/// random input reaches deep into the grammar instead of failing at once.
fn exposition_like() -> impl Strategy<Value = String> {
    proptest::string::string_regex(
        r#"([a-z_:{}="\\, #\t\n+.0-9eE-]|le|NaN|Inf|HELP|TYPE|\r){0,200}"#,
    )
    .expect("a valid regex")
}

#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, char),
    Delete(usize),
    Replace(usize, char),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let ch = prop_oneof![
        Just('"'),
        Just('\\'),
        Just('{'),
        Just('}'),
        Just('\n'),
        Just(' '),
        Just(','),
        Just('='),
        Just('#'),
        any::<char>(),
    ];
    prop_oneof![
        (any::<usize>(), ch.clone()).prop_map(|(i, c)| Mutation::Insert(i, c)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), ch).prop_map(|(i, c)| Mutation::Replace(i, c)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(text: &str, mutations: &[Mutation]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for m in mutations {
        let len = chars.len();
        match *m {
            Mutation::Insert(i, c) => chars.insert(i % (len + 1), c),
            Mutation::Delete(i) if len > 0 => {
                chars.remove(i % len);
            }
            Mutation::Replace(i, c) if len > 0 => chars[i % len] = c,
            Mutation::Truncate(i) => chars.truncate(i % (len + 1)),
            _ => {}
        }
    }
    chars.into_iter().collect()
}

/// Every preset reads `body` twice, a second apart, without panicking.
fn observe_with_every_preset(body: &str) {
    let t0 = Instant::now();
    for preset in PRESETS {
        let mut scraper = Scraper::new(preset, Duration::from_secs(30)).expect("a listed preset");
        let _ = scraper.observe(body, t0);
        let _ = scraper.observe(body, t0 + Duration::from_secs(1));
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(body in any::<String>()) {
        let _ = parse(&body);
        observe_with_every_preset(&body);
    }

    #[test]
    fn exposition_like_text_never_panics(body in exposition_like()) {
        let _ = parse(&body);
        observe_with_every_preset(&body);
    }

    #[test]
    fn mutated_real_scrapes_never_panic(
        fixture in 0..FIXTURES.len(),
        mutations in proptest::collection::vec(mutation(), 1..12),
    ) {
        let body = apply(FIXTURES[fixture], &mutations);
        let _ = parse(&body);
        observe_with_every_preset(&body);
    }

    #[test]
    fn written_samples_read_back_exactly(
        name in "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
        labels in proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,10}", any::<String>(), 0..5),
        value in any::<f64>().prop_filter("NaN never compares equal", |v| !v.is_nan()),
        timestamp in proptest::option::of(any::<i64>()),
    ) {
        let rendered: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let mut line = format!("{name}{{{}}} {value:?}", rendered.join(","));
        if let Some(ts) = timestamp {
            line.push_str(&format!(" {ts}"));
        }
        let exposition = parse(&line).expect("a well-formed line");
        prop_assert_eq!(exposition.skipped_lines, 0, "{}", line);
        let sample = &exposition.samples(&name)[0];
        prop_assert_eq!(sample.value, value);
        prop_assert_eq!(sample.timestamp_ms, timestamp);
        let read: std::collections::BTreeMap<String, String> = sample.labels.iter().cloned().collect();
        prop_assert_eq!(read, labels);
    }
}
