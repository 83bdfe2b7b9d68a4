//! Request traces the simulator replays: CSV files with a timestamp column
//! (the Azure LLM inference trace layout `TIMESTAMP,ContextTokens,
//! GeneratedTokens`, or unix seconds, or seconds from the start) and files of
//! per-second request counts. Parsing never panics: every problem names the
//! line, the column and what was expected.

use std::fmt::Write as _;

/// One request as the serving model sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// Seconds since the start of the trace.
    pub arrival_s: f64,
    pub context_tokens: u32,
    pub generated_tokens: u32,
}

/// Token counts for requests whose trace does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenDefaults {
    pub context_tokens: u32,
    pub generated_tokens: u32,
}

impl Default for TokenDefaults {
    fn default() -> Self {
        TokenDefaults {
            context_tokens: 1000,
            generated_tokens: 200,
        }
    }
}

/// A parsed trace: requests sorted by arrival, times rebased to the first.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestTrace {
    pub requests: Vec<Request>,
    /// Unix seconds of the first request (0 when the trace only gives
    /// seconds from its start): the predictor's seasons follow the wall clock.
    pub start_unix_s: i64,
}

/// Per-second request counts: `counts[s]` requests arrive in second `s`,
/// spread evenly across it.
#[derive(Debug, Clone, PartialEq)]
pub struct CountTrace {
    pub counts: Vec<u32>,
    pub tokens: TokenDefaults,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    #[error("the trace is empty: expected {0}")]
    Empty(&'static str),
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("line {line}, column {column} ({name}): expected {expected}, found `{found}`")]
    Field {
        line: usize,
        column: usize,
        name: String,
        expected: &'static str,
        found: String,
    },
}

/// Header names (lowercase, without `_`, `-` and spaces) of each column.
const TIMESTAMP_NAMES: [&str; 6] = [
    "timestamp",
    "time",
    "arrival",
    "arrivaltime",
    "arrivals",
    "ts",
];
const CONTEXT_NAMES: [&str; 5] = [
    "contexttokens",
    "prompttokens",
    "inputtokens",
    "context",
    "prompt",
];
const GENERATED_NAMES: [&str; 5] = [
    "generatedtokens",
    "outputtokens",
    "completiontokens",
    "generated",
    "output",
];

/// Timestamps above this are unix seconds (2001-09-09 onwards); below, seconds
/// from the start of the trace.
const UNIX_FROM: f64 = 1e9;

const TIMESTAMP_EXPECTED: &str =
    "a time like `2023-11-16 18:15:46.6805900`, unix seconds, or seconds from the start";
const TOKENS_EXPECTED: &str = "a whole number of tokens (0 or more)";

fn normalized(name: &str) -> String {
    name.trim()
        .trim_matches('"')
        .chars()
        .filter(|c| !matches!(c, '_' | '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

fn fields(line: &str) -> Vec<&str> {
    line.split(',')
        .map(|f| f.trim().trim_matches('"'))
        .collect()
}

/// Parses a CSV trace with a header line. Token columns are optional;
/// `defaults` fills them in. Rows may come in any order.
pub fn parse_csv(text: &str, defaults: TokenDefaults) -> Result<RequestTrace, TraceError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let Some((header_line, header)) = lines.next() else {
        return Err(TraceError::Empty(
            "a header line (e.g. `TIMESTAMP,ContextTokens,GeneratedTokens`) and one line per request",
        ));
    };
    let names = fields(header);
    let find = |wanted: &[&str]| names.iter().position(|n| wanted.contains(&&*normalized(n)));
    let Some(ts_col) = find(&TIMESTAMP_NAMES) else {
        return Err(TraceError::Line {
            line: header_line,
            message: format!(
                "no timestamp column in the header `{header}`; expected a column named \
                 TIMESTAMP (or timestamp, time, arrival)"
            ),
        });
    };
    let ctx_col = find(&CONTEXT_NAMES);
    let gen_col = find(&GENERATED_NAMES);

    let mut stamps: Vec<(f64, u32, u32, bool)> = Vec::new();
    for (line, text) in lines {
        let row = fields(text);
        if row.len() != names.len() {
            return Err(TraceError::Line {
                line,
                message: format!(
                    "expected {} comma-separated fields as in the header, found {}",
                    names.len(),
                    row.len()
                ),
            });
        }
        let field_error = |col: usize, expected| TraceError::Field {
            line,
            column: col + 1,
            name: names[col].to_string(),
            expected,
            found: row[col].to_string(),
        };
        let (stamp, absolute) =
            parse_timestamp(row[ts_col]).ok_or_else(|| field_error(ts_col, TIMESTAMP_EXPECTED))?;
        let tokens = |col: Option<usize>, default: u32| match col {
            None => Ok(default),
            Some(c) => row[c]
                .parse::<u32>()
                .map_err(|_| field_error(c, TOKENS_EXPECTED)),
        };
        let context = tokens(ctx_col, defaults.context_tokens)?;
        let generated = tokens(gen_col, defaults.generated_tokens)?;
        stamps.push((stamp, context, generated, absolute));
    }
    if stamps.is_empty() {
        return Err(TraceError::Empty("at least one request after the header"));
    }
    let first = stamps.iter().map(|s| s.0).fold(f64::INFINITY, f64::min);
    let absolute = stamps.iter().all(|s| s.3);
    let mut requests: Vec<Request> = stamps
        .into_iter()
        .map(|(t, context_tokens, generated_tokens, _)| Request {
            arrival_s: t - first,
            context_tokens,
            generated_tokens,
        })
        .collect();
    requests.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    Ok(RequestTrace {
        requests,
        start_unix_s: if absolute { first.floor() as i64 } else { 0 },
    })
}

/// A timestamp in seconds, and whether it is absolute (unix time).
fn parse_timestamp(s: &str) -> Option<(f64, bool)> {
    if s.contains('-') || s.contains(':') {
        return parse_datetime(s).map(|t| (t, true));
    }
    let v: f64 = s.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some((v, v >= UNIX_FROM))
}

/// `YYYY-MM-DD HH:MM:SS[.fraction][Z]` (or with a `T`), in UTC, to unix seconds.
fn parse_datetime(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z').unwrap_or(s);
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    if d.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    if !(1970..=9999).contains(&year) {
        return None;
    }
    let (clock, fraction) = match time.split_once('.') {
        Some((c, f)) => (c, f),
        None => (time, ""),
    };
    let mut c = clock.split(':');
    let hour: u32 = c.next()?.parse().ok()?;
    let minute: u32 = c.next()?.parse().ok()?;
    let second: u32 = c.next()?.parse().ok()?;
    if c.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let frac = if fraction.is_empty() {
        0.0
    } else {
        if !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        format!("0.{fraction}").parse::<f64>().ok()?
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Some(secs as f64 + frac)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm), so no date crate is needed for one conversion.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses per-second request counts: one count per line (line n is second
/// n − 1), or `second,count` lines (seconds in any order; repeats add up).
/// An optional header line and `#` comments are skipped.
pub fn parse_counts(text: &str, tokens: TokenDefaults) -> Result<CountTrace, TraceError> {
    let mut counts: Vec<u32> = Vec::new();
    let mut two_columns: Option<bool> = None;
    let mut next_second = 0usize;
    let mut first = true;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.trim_end_matches('\r').trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let row = fields(content);
        let is_first = std::mem::take(&mut first);
        if is_first && row[0].parse::<f64>().is_err() {
            // A header such as `second,count`.
            continue;
        }
        let pairs = row.len() == 2;
        if row.len() > 2 {
            return Err(TraceError::Line {
                line,
                message: format!(
                    "expected a count, or `second,count`, found {} fields",
                    row.len()
                ),
            });
        }
        match two_columns {
            None => two_columns = Some(pairs),
            Some(p) if p != pairs => {
                return Err(TraceError::Line {
                    line,
                    message: if p {
                        "expected `second,count` like the lines before, found one field".into()
                    } else {
                        "expected one count like the lines before, found `second,count`".into()
                    },
                })
            }
            Some(_) => {}
        }
        let field = |col: usize, name: &str, expected| TraceError::Field {
            line,
            column: col + 1,
            name: name.to_string(),
            expected,
            found: row[col].to_string(),
        };
        let (second, count_col) = if pairs {
            let s: usize = row[0]
                .parse()
                .ok()
                .filter(|s| *s <= MAX_COUNT_SECONDS)
                .ok_or_else(|| {
                    field(
                        0,
                        "second",
                        "a whole second since the start, up to 31 days (2678400)",
                    )
                })?;
            (s, 1)
        } else {
            if next_second > MAX_COUNT_SECONDS {
                return Err(TraceError::Line {
                    line,
                    message: "more than 31 days of seconds; allowed: up to 2678400 lines".into(),
                });
            }
            next_second += 1;
            (next_second - 1, 0)
        };
        let n: u32 = row[count_col].parse().map_err(|_| {
            field(
                count_col,
                "count",
                "a whole number of requests in that second (0 or more)",
            )
        })?;
        if counts.len() <= second {
            counts.resize(second + 1, 0);
        }
        counts[second] = counts[second].saturating_add(n);
    }
    if counts.iter().all(|c| *c == 0) {
        return Err(TraceError::Empty(
            "at least one request: one count per line, or `second,count` lines",
        ));
    }
    Ok(CountTrace { counts, tokens })
}

/// Longest count trace accepted: a month of seconds.
const MAX_COUNT_SECONDS: usize = 31 * 86_400;

/// Writes requests as a CSV trace (`timestamp,context_tokens,
/// generated_tokens`, seconds from the start) that [`parse_csv`] reads back.
pub fn write_csv(
    requests: impl Iterator<Item = Request>,
    out: &mut impl std::io::Write,
) -> std::io::Result<u64> {
    let mut line = String::with_capacity(64);
    out.write_all(b"timestamp,context_tokens,generated_tokens\n")?;
    let mut n = 0u64;
    for r in requests {
        line.clear();
        // Microseconds: finer than any engine's scheduling, and exact to read back.
        let _ = writeln!(
            line,
            "{:.6},{},{}",
            r.arrival_s, r.context_tokens, r.generated_tokens
        );
        out.write_all(line.as_bytes())?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const AZURE: &str = include_str!("../../tests/fixtures/traces/azure_conv.csv");

    #[test]
    fn reads_the_azure_layout() {
        let t = parse_csv(AZURE, TokenDefaults::default()).unwrap();
        assert_eq!(t.requests.len(), 20);
        // 2023-11-16 18:15:46 UTC.
        assert_eq!(t.start_unix_s, 1_700_158_546);
        let first = t.requests[0];
        assert_eq!(first.arrival_s, 0.0);
        assert_eq!((first.context_tokens, first.generated_tokens), (374, 44));
        // 18:15:46.6805900 → 18:15:50.0493457.
        let second = t.requests[1];
        assert!((second.arrival_s - 3.3687557).abs() < 1e-6, "{second:?}");
        assert!(t
            .requests
            .windows(2)
            .all(|w| w[0].arrival_s <= w[1].arrival_s));
    }

    #[test]
    fn unix_seconds_and_relative_seconds() {
        let t = parse_csv(
            "timestamp,prompt_tokens\n1700000010.5,10\n1700000000,20\n",
            TokenDefaults::default(),
        )
        .unwrap();
        assert_eq!(t.start_unix_s, 1_700_000_000);
        assert_eq!(t.requests[0].context_tokens, 20);
        assert_eq!(t.requests[1].arrival_s, 10.5);
        assert_eq!(t.requests[1].generated_tokens, 200, "default fills in");

        let t = parse_csv("time\n5\n7.25\n", TokenDefaults::default()).unwrap();
        assert_eq!(t.start_unix_s, 0);
        assert_eq!(t.requests[1].arrival_s, 2.25);
    }

    #[test]
    fn bad_lines_name_line_column_and_expectation() {
        let err = parse_csv(
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,10,5\n2023-11-16 18:15:47,ten,5\n",
            TokenDefaults::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 3, column 2 (ContextTokens): expected a whole number of tokens (0 or more), found `ten`"
        );
        let err = parse_csv(
            "TIMESTAMP,ContextTokens\n2023-13-16 18:15:46,1\n",
            TokenDefaults::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("line 2, column 1 (TIMESTAMP): expected a time like"),
            "{err}"
        );
        let err = parse_csv("TIMESTAMP,a\n1,2,3\n", TokenDefaults::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: expected 2 comma-separated fields as in the header, found 3"
        );
        let err = parse_csv("when,tokens\n1,2\n", TokenDefaults::default()).unwrap_err();
        assert!(err.to_string().contains("no timestamp column"), "{err}");
        assert!(matches!(
            parse_csv("TIMESTAMP\n", TokenDefaults::default()),
            Err(TraceError::Empty(_))
        ));
        assert!(matches!(
            parse_csv("", TokenDefaults::default()),
            Err(TraceError::Empty(_))
        ));
    }

    #[test]
    fn counts_one_per_line_or_pairs() {
        let c = parse_counts("3\n0\n# quiet\n\n2\n", TokenDefaults::default()).unwrap();
        assert_eq!(c.counts, vec![3, 0, 2]);
        let c = parse_counts("second,count\n4,2\n1,1\n4,1\n", TokenDefaults::default()).unwrap();
        assert_eq!(c.counts, vec![0, 1, 0, 0, 3]);
    }

    #[test]
    fn bad_counts_say_where_and_what() {
        let err = parse_counts("1\n2\nx3\n", TokenDefaults::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 3, column 1 (count): expected a whole number of requests in that second (0 or more), found `x3`"
        );
        let err = parse_counts("0,1\n5\n", TokenDefaults::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: expected `second,count` like the lines before, found one field"
        );
        let err = parse_counts("0,-1\n", TokenDefaults::default()).unwrap_err();
        assert!(err.to_string().starts_with("line 1, column 2 (count)"));
        assert!(matches!(
            parse_counts("0\n0\n", TokenDefaults::default()),
            Err(TraceError::Empty(_))
        ));
    }

    #[test]
    fn written_traces_read_back() {
        let reqs = vec![
            Request {
                arrival_s: 0.0,
                context_tokens: 5,
                generated_tokens: 6,
            },
            Request {
                arrival_s: 1.25,
                context_tokens: 7,
                generated_tokens: 8,
            },
        ];
        let mut out = Vec::new();
        assert_eq!(write_csv(reqs.iter().copied(), &mut out).unwrap(), 2);
        let text = String::from_utf8(out).unwrap();
        let t = parse_csv(&text, TokenDefaults::default()).unwrap();
        assert_eq!(t.requests, reqs);
    }

    #[test]
    fn days_from_civil_matches_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2023, 11, 16), 19_677);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse_csv(&text, TokenDefaults::default());
            let _ = parse_counts(&text, TokenDefaults::default());
        }

        #[test]
        fn csv_like_text_never_panics(
            rows in proptest::collection::vec("[0-9:. ,T-]{0,30}", 0..20),
        ) {
            let text = format!("TIMESTAMP,ContextTokens,GeneratedTokens\n{}", rows.join("\n"));
            if let Err(e) = parse_csv(&text, TokenDefaults::default()) {
                prop_assert!(e.to_string().starts_with("line ") || e.to_string().starts_with("the trace is empty"));
            }
            let _ = parse_counts(&rows.join("\n"), TokenDefaults::default());
        }
    }
}
