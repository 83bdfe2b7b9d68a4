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
    #[error("{0}")]
    Filter(String),
    #[error("line {line}, key `{key}`: expected {expected}, found `{found}`")]
    Key {
        line: usize,
        key: String,
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
const CONTEXT_NAMES: [&str; 9] = [
    "contexttokens",
    "prompttokens",
    "inputtokens",
    "requesttokens",
    "inputlength",
    "promptlength",
    "inputlen",
    "context",
    "prompt",
];
const GENERATED_NAMES: [&str; 9] = [
    "generatedtokens",
    "outputtokens",
    "completiontokens",
    "responsetokens",
    "outputlength",
    "completionlength",
    "outputlen",
    "generated",
    "output",
];

/// Timestamps above this are unix seconds (2001-09-09 onwards); below, seconds
/// from the start of the trace.
const UNIX_FROM: f64 = 1e9;

const TOKENS_EXPECTED: &str = "a whole number of tokens (0 or more)";

/// What a number in a timestamp column counts (`--time-unit s|ms|us`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TimeUnit {
    #[value(name = "s")]
    Seconds,
    #[value(name = "ms")]
    Millis,
    #[value(name = "us")]
    Micros,
}

impl TimeUnit {
    fn per_second(self) -> f64 {
        match self {
            TimeUnit::Seconds => 1.0,
            TimeUnit::Millis => 1e3,
            TimeUnit::Micros => 1e6,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TimeUnit::Seconds => "seconds",
            TimeUnit::Millis => "milliseconds",
            TimeUnit::Micros => "microseconds",
        }
    }

    fn expected(self) -> &'static str {
        match self {
            TimeUnit::Seconds => {
                "a time like `2023-11-16 18:15:46.6805900`, unix seconds, or seconds from the start"
            }
            TimeUnit::Millis => {
                "a time like `2023-11-16 18:15:46.6805900`, unix milliseconds, or milliseconds from the start"
            }
            TimeUnit::Micros => {
                "a time like `2023-11-16 18:15:46.6805900`, unix microseconds, or microseconds from the start"
            }
        }
    }
}

/// How a request trace is read.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TraceOptions<'a> {
    pub tokens: TokenDefaults,
    /// What numbers in the timestamp column count; `None`: as the column's
    /// name says (`timestamp_ms`), else milliseconds for a `timestamp` key in
    /// JSON lines (the Mooncake trace layout) and seconds otherwise.
    pub time_unit: Option<TimeUnit>,
    /// Keep only the requests whose model column (`model`, `Model`) names
    /// this model (traces of several models, as BurstGPT's).
    pub model: Option<&'a str>,
}

/// How a trace file was read: its layout and which column gave what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceLayout {
    pub json_lines: bool,
    pub timestamp: String,
    pub time_unit: TimeUnit,
    pub context: Option<String>,
    pub generated: Option<String>,
    /// The model column a filter read, with the requests it kept and read.
    pub model: Option<ModelFilter>,
}

/// Which requests a `--trace-model` filter kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFilter {
    pub column: String,
    pub model: String,
    pub kept: usize,
    pub read: usize,
}

/// Names of a model column.
const MODEL_NAMES: [&str; 2] = ["model", "modelname"];

/// Whether `value` names `wanted` (case and surrounding space aside), and
/// the distinct other values seen, for the error when none matches.
#[derive(Default)]
struct ModelMatch {
    seen: Vec<String>,
}

impl ModelMatch {
    fn matches(&mut self, value: &str, wanted: &str) -> bool {
        let value = value.trim();
        if value.eq_ignore_ascii_case(wanted.trim()) {
            return true;
        }
        if self.seen.len() < 20 && !self.seen.iter().any(|s| s == value) {
            self.seen.push(value.to_string());
        }
        false
    }

    fn none_matched(&self, column: &str, wanted: &str) -> TraceError {
        TraceError::Filter(format!(
            "no request of model `{wanted}` in column `{column}`; models seen: {}",
            if self.seen.is_empty() {
                "none".to_string()
            } else {
                self.seen.join(", ")
            }
        ))
    }
}

impl TraceLayout {
    /// One line for the operator: what was read from where, and what was
    /// filled in.
    pub fn describe(&self, tokens: TokenDefaults) -> String {
        let (what, field) = if self.json_lines {
            ("JSON lines", "key")
        } else {
            ("CSV", "column")
        };
        let column = |name: &Option<String>, kind: &str, default: u32, flag: &str| match name {
            Some(n) => format!("{kind} tokens from `{n}`"),
            None => format!("no {kind}-token {field}: {default} each ({flag})"),
        };
        let filter = self
            .model
            .as_ref()
            .map(|f| {
                format!(
                    "; {} of {} requests, those whose `{}` is `{}`",
                    f.kept, f.read, f.column, f.model
                )
            })
            .unwrap_or_default();
        format!(
            "{what}; times from `{}` ({} when a number); {}; {}{filter}",
            self.timestamp,
            self.time_unit.as_str(),
            column(
                &self.context,
                "prompt",
                tokens.context_tokens,
                "--context-tokens"
            ),
            column(
                &self.generated,
                "answer",
                tokens.generated_tokens,
                "--generated-tokens"
            ),
        )
    }
}

/// The unit a timestamp column's name gives (`timestamp_ms`), if it is one.
fn timestamp_column(name: &str) -> Option<Option<TimeUnit>> {
    let n = normalized(name);
    if TIMESTAMP_NAMES.contains(&&*n) {
        return Some(None);
    }
    for (suffix, unit) in [
        ("ms", TimeUnit::Millis),
        ("us", TimeUnit::Micros),
        ("s", TimeUnit::Seconds),
    ] {
        if let Some(base) = n.strip_suffix(suffix) {
            if TIMESTAMP_NAMES.contains(&base) {
                return Some(Some(unit));
            }
        }
    }
    None
}

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

/// Parses a request trace: CSV with a header line, or JSON lines (one object
/// per request, as in the Mooncake trace), told apart by the first line.
/// Rows may come in any order.
pub fn parse(
    text: &str,
    opts: TraceOptions<'_>,
) -> Result<(RequestTrace, TraceLayout), TraceError> {
    // A byte-order mark, as spreadsheets write one, is not part of the header.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .peekable();
    let Some(&(first_line, first)) = lines.peek() else {
        return Err(TraceError::Empty(
            "a header line (e.g. `TIMESTAMP,ContextTokens,GeneratedTokens`) and one line per request, or one JSON object per request",
        ));
    };
    if first.trim_start().starts_with('[') {
        return Err(TraceError::Line {
            line: first_line,
            message: format!(
                "`{}…` looks like one JSON array; expected CSV with a header, or one JSON object per line (`jq -c '.[]' FILE` writes that)",
                first.trim_start().chars().take(20).collect::<String>()
            ),
        });
    }
    let (stamps, layout) = if first.trim_start().starts_with('{') {
        read_json_lines(lines, opts)?
    } else {
        read_csv(lines, opts)?
    };
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
    let trace = RequestTrace {
        requests,
        start_unix_s: if absolute { first.floor() as i64 } else { 0 },
    };
    Ok((trace, layout))
}

/// A request as read: seconds, prompt and answer tokens, whether the time
/// is absolute (unix).
type Stamp = (f64, u32, u32, bool);

fn read_csv<'a>(
    mut lines: impl Iterator<Item = (usize, &'a str)>,
    opts: TraceOptions<'_>,
) -> Result<(Vec<Stamp>, TraceLayout), TraceError> {
    let Some((header_line, header)) = lines.next() else {
        return Err(TraceError::Empty("a header line"));
    };
    let names = fields(header);
    let find = |wanted: &[&str]| names.iter().position(|n| wanted.contains(&&*normalized(n)));
    let Some((ts_col, named_unit)) = names
        .iter()
        .enumerate()
        .find_map(|(i, n)| timestamp_column(n).map(|u| (i, u)))
    else {
        return Err(TraceError::Line {
            line: header_line,
            message: format!(
                "no timestamp column in the header `{header}`; expected a column named \
                 TIMESTAMP (or timestamp, time, arrival; timestamp_ms for milliseconds)"
            ),
        });
    };
    let unit = opts.time_unit.or(named_unit).unwrap_or(TimeUnit::Seconds);
    let ctx_col = find(&CONTEXT_NAMES);
    let gen_col = find(&GENERATED_NAMES);
    let model_col = match opts.model {
        None => None,
        Some(_) => Some(find(&MODEL_NAMES).ok_or_else(|| TraceError::Line {
            line: header_line,
            message: format!(
                "--trace-model needs a model column (named model or model_name); the header `{header}` has none"
            ),
        })?),
    };
    let mut layout = TraceLayout {
        json_lines: false,
        timestamp: names[ts_col].to_string(),
        time_unit: unit,
        context: ctx_col.map(|c| names[c].to_string()),
        generated: gen_col.map(|c| names[c].to_string()),
        model: None,
    };
    let mut matcher = ModelMatch::default();
    let mut read = 0;

    let mut stamps = Vec::new();
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
        read += 1;
        if let (Some(c), Some(wanted)) = (model_col, opts.model) {
            if !matcher.matches(row[c], wanted) {
                continue;
            }
        }
        let (stamp, absolute) = parse_timestamp(row[ts_col], unit)
            .ok_or_else(|| field_error(ts_col, unit.expected()))?;
        let tokens = |col: Option<usize>, default: u32| match col {
            None => Ok(default),
            Some(c) => row[c]
                .parse::<u32>()
                .map_err(|_| field_error(c, TOKENS_EXPECTED)),
        };
        let context = tokens(ctx_col, opts.tokens.context_tokens)?;
        let generated = tokens(gen_col, opts.tokens.generated_tokens)?;
        stamps.push((stamp, context, generated, absolute));
    }
    if let (Some(c), Some(wanted)) = (model_col, opts.model) {
        if stamps.is_empty() && read > 0 {
            return Err(matcher.none_matched(names[c], wanted));
        }
        layout.model = Some(ModelFilter {
            column: names[c].to_string(),
            model: wanted.to_string(),
            kept: stamps.len(),
            read,
        });
    }
    Ok((stamps, layout))
}

/// JSON lines: one object per request. The keys are found by the same
/// names as CSV columns, on the first line; every line must have those the
/// first had.
fn read_json_lines<'a>(
    lines: impl Iterator<Item = (usize, &'a str)>,
    opts: TraceOptions<'_>,
) -> Result<(Vec<Stamp>, TraceLayout), TraceError> {
    let mut layout: Option<TraceLayout> = None;
    let mut stamps = Vec::new();
    let mut matcher = ModelMatch::default();
    let mut read = 0;
    for (line, text) in lines {
        let obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| TraceError::Line {
                line,
                message: format!(
                    "expected a JSON object (one request per line, as on the first line): {e}"
                ),
            })?;
        let layout = match &layout {
            Some(l) => l,
            None => layout.insert(json_layout(&obj, line, opts)?),
        };
        let value = |key: &str| {
            obj.get(key).ok_or_else(|| TraceError::Line {
                line,
                message: format!("no `{key}` key; expected one on every line, as on the first"),
            })
        };
        let field_error = |key: &str, expected, found: &serde_json::Value| TraceError::Key {
            line,
            key: key.to_string(),
            expected,
            found: found.to_string(),
        };
        read += 1;
        if let (Some(filter), Some(wanted)) = (&layout.model, opts.model) {
            let v = value(&filter.column)?;
            let name = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            if !matcher.matches(&name, wanted) {
                continue;
            }
        }
        let v = value(&layout.timestamp)?;
        let text_stamp = match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let (stamp, absolute) = text_stamp
            .and_then(|s| parse_timestamp(&s, layout.time_unit))
            .ok_or_else(|| field_error(&layout.timestamp, layout.time_unit.expected(), v))?;
        let tokens = |key: &Option<String>, default: u32| match key {
            None => Ok(default),
            Some(k) => {
                let v = value(k)?;
                let n = match v {
                    serde_json::Value::Number(n) => n.as_u64(),
                    serde_json::Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                };
                n.and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| field_error(k, TOKENS_EXPECTED, v))
            }
        };
        let context = tokens(&layout.context, opts.tokens.context_tokens)?;
        let generated = tokens(&layout.generated, opts.tokens.generated_tokens)?;
        stamps.push((stamp, context, generated, absolute));
    }
    let mut layout = layout.ok_or(TraceError::Empty("at least one request"))?;
    if let (Some(filter), Some(wanted)) = (&mut layout.model, opts.model) {
        if stamps.is_empty() {
            return Err(matcher.none_matched(&filter.column, wanted));
        }
        (filter.kept, filter.read) = (stamps.len(), read);
    }
    Ok((stamps, layout))
}

/// Which keys of a JSON-lines trace hold what, from its first object.
fn json_layout(
    obj: &serde_json::Map<String, serde_json::Value>,
    line: usize,
    opts: TraceOptions<'_>,
) -> Result<TraceLayout, TraceError> {
    let find = |wanted: &[&str]| {
        obj.keys()
            .find(|k| wanted.contains(&&*normalized(k)))
            .cloned()
    };
    let Some((timestamp, named_unit)) = obj
        .keys()
        .find_map(|k| timestamp_column(k).map(|u| (k.clone(), u)))
    else {
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        return Err(TraceError::Line {
            line,
            message: format!(
                "no timestamp key in the object (keys: {}); expected one named timestamp \
                 (milliseconds, as in the Mooncake trace), time or arrival (seconds)",
                keys.join(", ")
            ),
        });
    };
    // The Mooncake trace and the tools that replay it count `timestamp` in
    // milliseconds from the first request.
    let unit = opts.time_unit.or(named_unit).unwrap_or_else(|| {
        if normalized(&timestamp) == "timestamp" {
            TimeUnit::Millis
        } else {
            TimeUnit::Seconds
        }
    });
    let model = match opts.model {
        None => None,
        Some(wanted) => Some(ModelFilter {
            column: find(&MODEL_NAMES).ok_or_else(|| TraceError::Line {
                line,
                message: "--trace-model needs a model key (named model or model_name); the first object has none".into(),
            })?,
            model: wanted.to_string(),
            kept: 0,
            read: 0,
        }),
    };
    Ok(TraceLayout {
        json_lines: true,
        timestamp,
        time_unit: unit,
        context: find(&CONTEXT_NAMES),
        generated: find(&GENERATED_NAMES),
        model,
    })
}

/// A timestamp in seconds, and whether it is absolute (unix time). A
/// number counts `unit`s.
fn parse_timestamp(s: &str, unit: TimeUnit) -> Option<(f64, bool)> {
    let Ok(v) = s.parse::<f64>() else {
        return parse_datetime(s).map(|t| (t, true));
    };
    let v = v / unit.per_second();
    (v.is_finite() && v >= 0.0).then_some((v, v >= UNIX_FROM))
}

/// `YYYY-MM-DD HH:MM:SS[.fraction]` (or with a `T`), in UTC or with a
/// `Z` or a UTC offset (`+00:00`, `-0500`, `+02`, as pandas and ISO 8601
/// write them), to unix seconds.
fn parse_datetime(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z').unwrap_or(s);
    let (date, time) = s.split_once([' ', 'T'])?;
    let (time, offset_s) = match time.rfind(['+', '-']) {
        Some(at) => (&time[..at], utc_offset_s(&time[at..])?),
        None => (time, 0),
    };
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
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_s;
    Some(secs as f64 + frac)
}

/// Seconds east of UTC of `+HH:MM`, `+HHMM` or `+HH` (or `-`).
fn utc_offset_s(s: &str) -> Option<i64> {
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = s[1..].chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) || !matches!(digits.len(), 2 | 4) {
        return None;
    }
    let hours: i64 = digits[..2].parse().ok()?;
    let minutes: i64 = if digits.len() == 4 {
        digits[2..].parse().ok()?
    } else {
        0
    };
    if hours > 23 || minutes > 59 || (s[1..].contains(':') && s.len() != 6) {
        return None;
    }
    Some(sign * (hours * 3600 + minutes * 60))
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
    // A byte-order mark would make the first count look like a header.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
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
/// generated_tokens`, seconds from the start) that [`parse`] reads back.
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

    /// A trace as `--trace` reads it with no other flag.
    fn parse_csv(text: &str, defaults: TokenDefaults) -> Result<RequestTrace, TraceError> {
        parse(
            text,
            TraceOptions {
                tokens: defaults,
                ..TraceOptions::default()
            },
        )
        .map(|(t, _)| t)
    }

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

    fn read(text: &str, unit: Option<TimeUnit>) -> Result<(RequestTrace, TraceLayout), TraceError> {
        parse(
            text,
            TraceOptions {
                tokens: TokenDefaults::default(),
                time_unit: unit,
                model: None,
            },
        )
    }

    fn of_model(text: &str, model: &str) -> Result<(RequestTrace, TraceLayout), TraceError> {
        parse(
            text,
            TraceOptions {
                model: Some(model),
                ..TraceOptions::default()
            },
        )
    }

    #[test]
    fn a_trace_of_several_models_replays_one() {
        let burst = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n\
                     5,ChatGPT,472,18,490,Conversation log\n\
                     7,GPT-4,1087,0,1087,Conversation log\n\
                     9,ChatGPT,100,10,110,API log\n";
        let (t, layout) = of_model(burst, "gpt-4").unwrap();
        assert_eq!(t.requests.len(), 1);
        assert_eq!(t.requests[0].context_tokens, 1087);
        let f = layout.model.clone().unwrap();
        assert_eq!((f.column.as_str(), f.kept, f.read), ("Model", 1, 3));
        assert!(
            layout
                .describe(TokenDefaults::default())
                .ends_with("; 1 of 3 requests, those whose `Model` is `gpt-4`"),
            "{}",
            layout.describe(TokenDefaults::default())
        );
        let (t, _) = of_model(burst, "ChatGPT").unwrap();
        assert_eq!(
            t.requests.iter().map(|r| r.arrival_s).collect::<Vec<_>>(),
            vec![0.0, 4.0]
        );
        assert_eq!(
            of_model(burst, "llama").unwrap_err().to_string(),
            "no request of model `llama` in column `Model`; models seen: ChatGPT, GPT-4"
        );
        assert!(of_model("time\n1\n", "x")
            .unwrap_err()
            .to_string()
            .contains("--trace-model needs a model column"));
        // JSON lines alike.
        let lines = "{\"timestamp\": 0, \"model\": \"a\"}\n{\"timestamp\": 500, \"model\": \"b\"}\n{\"timestamp\": 1500, \"model\": \"b\"}\n";
        let (t, layout) = of_model(lines, "b").unwrap();
        assert_eq!(
            t.requests.iter().map(|r| r.arrival_s).collect::<Vec<_>>(),
            vec![0.0, 1.0]
        );
        assert_eq!(layout.model.map(|f| (f.kept, f.read)), Some((2, 3)));
        assert!(of_model(lines, "c")
            .unwrap_err()
            .to_string()
            .ends_with("models seen: a, b"));
        assert!(of_model("{\"timestamp\": 0}\n", "a")
            .unwrap_err()
            .to_string()
            .contains("needs a model key"));
    }

    #[test]
    fn reads_burstgpts_request_and_response_tokens() {
        let (t, layout) = read(
            "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
             5,ChatGPT,472,18,490,Conversation log
             45.5,GPT-4,1087,0,1087,Conversation log
",
            None,
        )
        .unwrap();
        assert_eq!(layout.time_unit, TimeUnit::Seconds);
        assert_eq!(layout.context.as_deref(), Some("Request tokens"));
        assert_eq!(layout.generated.as_deref(), Some("Response tokens"));
        let got: Vec<_> = t
            .requests
            .iter()
            .map(|r| (r.arrival_s, r.context_tokens, r.generated_tokens))
            .collect();
        assert_eq!(got, vec![(0.0, 472, 18), (40.5, 1087, 0)]);
    }

    #[test]
    fn reads_mooncake_json_lines_in_milliseconds() {
        let text = "{\"timestamp\": 3052, \"input_length\": 7234, \"output_length\": 794, \"hash_ids\": [0, 28]}\n\
                    {\"timestamp\": 0, \"input_length\": 6755, \"output_length\": 500, \"hash_ids\": [0, 1]}\n";
        let (t, layout) = read(text, None).unwrap();
        assert!(layout.json_lines);
        assert_eq!(layout.time_unit, TimeUnit::Millis);
        let got: Vec<_> = t
            .requests
            .iter()
            .map(|r| (r.arrival_s, r.context_tokens, r.generated_tokens))
            .collect();
        assert_eq!(got, vec![(0.0, 6755, 500), (3.052, 7234, 794)]);
        assert_eq!(t.start_unix_s, 0);
        // Told otherwise, the same numbers are seconds.
        let (t, _) = read(text, Some(TimeUnit::Seconds)).unwrap();
        assert_eq!(t.requests[1].arrival_s, 3052.0);
        // Other time keys are seconds, as in CSV.
        let (t, layout) = read("{\"arrival\": 2.5}\n{\"arrival\": 4}\n", None).unwrap();
        assert_eq!(layout.time_unit, TimeUnit::Seconds);
        assert_eq!(t.requests[1].arrival_s, 1.5);
        assert_eq!(t.requests[1].context_tokens, 1000, "default fills in");
    }

    #[test]
    fn a_columns_name_can_give_its_unit() {
        let (t, layout) = read("timestamp_ms,prompt_tokens\n1500,1\n500,2\n", None).unwrap();
        assert_eq!(layout.time_unit, TimeUnit::Millis);
        assert_eq!(t.requests[1].arrival_s, 1.0);
        let (t, _) = read("time_us\n1700000000000000\n1700000002000000\n", None).unwrap();
        assert_eq!(t.start_unix_s, 1_700_000_000, "unix microseconds");
        assert_eq!(t.requests[1].arrival_s, 2.0);
        let err = read("timestamp_ms\nsoon\n", None).unwrap_err().to_string();
        assert!(
            err.contains("unix milliseconds, or milliseconds from the start"),
            "{err}"
        );
    }

    #[test]
    fn bad_json_lines_say_where_and_what() {
        let err = |text: &str| read(text, None).unwrap_err().to_string();
        assert_eq!(
            err("{\"timestamp\": 0, \"input_length\": 5}\n{\"timestamp\": 1, \"input_length\": \"x\"}\n"),
            "line 2, key `input_length`: expected a whole number of tokens (0 or more), found `\"x\"`"
        );
        assert_eq!(
            err("{\"timestamp\": 0, \"input_length\": 5}\n{\"time\": 1}\n"),
            "line 2: no `timestamp` key; expected one on every line, as on the first"
        );
        assert!(err("{\"timestamp\": 0}\n[1]\n")
            .starts_with("line 2: expected a JSON object (one request per line"));
        assert!(err("{\"when\": 0, \"input_length\": 5}\n")
            .starts_with("line 1: no timestamp key in the object (keys: input_length, when)"));
        assert!(
            err("{\"timestamp\": -1}\n").starts_with("line 1, key `timestamp`: expected a time")
        );
        assert!(
            err("[{\"timestamp\": 1}]\n").contains("one JSON object per line (`jq -c '.[]' FILE`")
        );
        assert!(err("{\"timestamp\": 1, \"output_length\": 5000000000}\n")
            .starts_with("line 1, key `output_length`: expected a whole number"));
    }

    #[test]
    fn counts_one_per_line_or_pairs() {
        let c = parse_counts("3\n0\n# quiet\n\n2\n", TokenDefaults::default()).unwrap();
        assert_eq!(c.counts, vec![3, 0, 2]);
        let c = parse_counts("second,count\n4,2\n1,1\n4,1\n", TokenDefaults::default()).unwrap();
        assert_eq!(c.counts, vec![0, 1, 0, 0, 3]);
        let c = parse_counts("\u{feff}3\n1\n", TokenDefaults::default()).unwrap();
        assert_eq!(c.counts, vec![3, 1], "a byte-order mark is no header");
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
    fn times_with_a_utc_offset_are_read_as_utc() {
        // As pandas writes time-zone-aware times.
        let t = parse_csv(
            "TIMESTAMP,ContextTokens,GeneratedTokens\n\
             2024-05-10 00:00:00.009930+00:00,2048,28\n\
             2024-05-10 02:00:01.5+02:00,10,1\n\
             2024-05-09T19:00:03-0500,10,1\n\
             2024-05-10T00:00:04Z,10,1\n",
            TokenDefaults::default(),
        )
        .unwrap();
        assert_eq!(t.start_unix_s, 1_715_299_200, "2024-05-10 00:00:00 UTC");
        let at: Vec<f64> = t
            .requests
            .iter()
            .map(|r| (r.arrival_s * 1e3).round() / 1e3)
            .collect();
        assert_eq!(at, vec![0.0, 1.49, 2.99, 3.99]);
        // A spreadsheet's byte-order mark before the header.
        let t = parse_csv("\u{feff}TIMESTAMP\n1\n2\n", TokenDefaults::default()).unwrap();
        assert_eq!(t.requests.len(), 2);
        for bad in [
            "2024-05-10 00:00:00+25:00",
            "2024-05-10 00:00:00+1",
            "2024-05-10 00:00:00+00:0",
            "2024-05-10 00:00:00+0a:00",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
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
        fn json_like_text_never_panics(
            rows in proptest::collection::vec("\\{[a-z_\":, 0-9.eE+-]{0,40}\\}?", 0..10),
        ) {
            let _ = read(&rows.join("\n"), None);
            let _ = read(&rows.join("\n"), Some(TimeUnit::Micros));
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
