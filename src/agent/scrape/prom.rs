//! Prometheus text exposition format (0.0.4), the language every model server's
//! `/metrics` speaks. Tolerant per line: a bad line is skipped and reported with
//! its number, and the rest of the scrape is kept.

use std::collections::BTreeMap;
use std::fmt;

/// Largest body the agent parses. Model servers expose a few hundred KiB at most;
/// anything far beyond is a misbehaving endpoint, not metrics worth the memory.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Line errors kept for the report; the rest are only counted.
pub const MAX_REPORTED_ERRORS: usize = 16;

/// Labels per sample beyond which a line is refused: real engines use a few
/// dozen at most, and the cap keeps a hostile line from costing much.
const MAX_LABELS: usize = 128;

/// One sample line: its labels (in the order written), value and timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

/// A line that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("metrics body is {size} bytes, over the {limit}-byte limit; refusing to parse it")]
    TooLarge { size: usize, limit: usize },
    #[error("no line of the metrics body could be parsed ({skipped} bad lines; first at {first})")]
    NothingParsed { skipped: usize, first: LineError },
}

/// A parsed scrape: samples grouped by their sample name (so a histogram `x`
/// appears as `x_bucket`, `x_sum`, `x_count`), plus what had to be skipped.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    samples: BTreeMap<String, Vec<Sample>>,
    types: BTreeMap<String, MetricType>,
    /// Number of lines skipped as malformed.
    pub skipped_lines: usize,
    /// The first few skipped lines, with their reasons.
    pub line_errors: Vec<LineError>,
}

impl Exposition {
    /// Samples of one name, in the order they appeared; empty when absent.
    pub fn samples(&self, name: &str) -> &[Sample] {
        self.samples.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn contains(&self, name: &str) -> bool {
        self.samples.contains_key(name)
    }

    /// All sample names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.samples.keys().map(String::as_str)
    }

    /// The type a `# TYPE` line declared for a metric family.
    pub fn metric_type(&self, family: &str) -> Option<MetricType> {
        self.types.get(family).copied()
    }

    /// Total number of samples kept.
    pub fn len(&self) -> usize {
        self.samples.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Sum over every label set of `name` (several models, engines, ranks).
    /// Non-finite values say nothing about load and are left out; `None` when
    /// the name is absent or has no finite value.
    pub fn sum(&self, name: &str) -> Option<f64> {
        finite_sum(self.samples(name).iter())
    }

    /// Like [`Exposition::sum`], over the label sets where `label` is `value`.
    pub fn sum_where(&self, name: &str, label: &str, value: &str) -> Option<f64> {
        finite_sum(
            self.samples(name)
                .iter()
                .filter(|s| s.label(label) == Some(value)),
        )
    }

    /// Mean over the label sets of `name`: for ratios (cache use per engine),
    /// where a sum would exceed 1.
    pub fn mean(&self, name: &str) -> Option<f64> {
        let finite: Vec<f64> = self
            .samples(name)
            .iter()
            .map(|s| s.value)
            .filter(|v| v.is_finite())
            .collect();
        if finite.is_empty() {
            None
        } else {
            Some(finite.iter().sum::<f64>() / finite.len() as f64)
        }
    }

    /// The sum of the first name in `names` that is present.
    pub fn sum_first(&self, names: &[&str]) -> Option<f64> {
        names.iter().find_map(|n| self.sum(n))
    }

    /// The sum over all of `names` the exposition has; `None` when it has none.
    pub fn sum_all(&self, names: &[&str]) -> Option<f64> {
        names
            .iter()
            .filter_map(|n| self.sum(n))
            .reduce(|a, b| a + b)
    }
}

fn finite_sum<'a>(samples: impl Iterator<Item = &'a Sample>) -> Option<f64> {
    let mut total = None;
    for v in samples.map(|s| s.value).filter(|v| v.is_finite()) {
        total = Some(total.unwrap_or(0.0) + v);
    }
    total
}

/// Parses a whole scrape. Bad lines are skipped and reported in the result;
/// only a body over [`MAX_BODY_BYTES`], or one where every line is bad, fails.
pub fn parse(body: &str) -> Result<Exposition, ParseError> {
    parse_limited(body, MAX_BODY_BYTES)
}

pub(crate) fn parse_limited(body: &str, limit: usize) -> Result<Exposition, ParseError> {
    if body.len() > limit {
        return Err(ParseError::TooLarge {
            size: body.len(),
            limit,
        });
    }
    let mut exposition = Exposition::default();
    let mut first_error = None;
    for (index, raw) in body.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let line = line.trim_start_matches([' ', '\t']);
        if line.is_empty() {
            continue;
        }
        let outcome = if let Some(comment) = line.strip_prefix('#') {
            parse_comment(comment, &mut exposition.types)
        } else {
            parse_sample(line).map(|(name, sample)| {
                exposition.samples.entry(name).or_default().push(sample);
            })
        };
        if let Err(reason) = outcome {
            let error = LineError {
                line: index + 1,
                reason,
            };
            exposition.skipped_lines += 1;
            if first_error.is_none() {
                first_error = Some(error.clone());
            }
            if exposition.line_errors.len() < MAX_REPORTED_ERRORS {
                exposition.line_errors.push(error);
            }
        }
    }
    match first_error {
        Some(first) if exposition.samples.is_empty() && exposition.types.is_empty() => {
            Err(ParseError::NothingParsed {
                skipped: exposition.skipped_lines,
                first,
            })
        }
        _ => Ok(exposition),
    }
}

/// `# HELP name text`, `# TYPE name type`, or any other comment.
fn parse_comment(comment: &str, types: &mut BTreeMap<String, MetricType>) -> Result<(), String> {
    let rest = comment.trim_start_matches([' ', '\t']);
    let (keyword, rest) = split_token(rest);
    match keyword {
        "HELP" => {
            let (name, _) = split_token(rest);
            check_metric_name(name).map_err(|e| format!("HELP line: {e}"))
        }
        "TYPE" => {
            let (name, rest) = split_token(rest);
            check_metric_name(name).map_err(|e| format!("TYPE line: {e}"))?;
            let (kind, rest) = split_token(rest);
            if !rest.trim_matches([' ', '\t']).is_empty() {
                return Err(format!("TYPE line for `{name}` has text after the type"));
            }
            let kind = match kind {
                "counter" => MetricType::Counter,
                "gauge" => MetricType::Gauge,
                "histogram" => MetricType::Histogram,
                "summary" => MetricType::Summary,
                "untyped" => MetricType::Untyped,
                other => {
                    return Err(format!(
                        "TYPE line for `{name}` has type `{other}`; allowed: counter, gauge, histogram, summary, untyped"
                    ))
                }
            };
            types.insert(name.to_string(), kind);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The next blank-separated token and what follows it.
fn split_token(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches([' ', '\t']);
    match s.find([' ', '\t']) {
        Some(end) => (&s[..end], &s[end..]),
        None => (s, ""),
    }
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':'
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    match bytes.first() {
        None => Err("missing metric name".to_string()),
        Some(&b) if !is_name_start(b) => Err(format!("invalid metric name `{name}`")),
        _ if !bytes.iter().all(|&b| is_name_char(b)) => {
            Err(format!("invalid metric name `{name}`"))
        }
        _ => Ok(()),
    }
}

/// A cursor over one sample line. Every split point is an ASCII byte, so
/// slicing between them never cuts a UTF-8 character.
struct Cursor<'a> {
    line: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.line.as_bytes().get(self.pos).copied()
    }

    fn skip_blanks(&mut self) -> bool {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        self.pos > start
    }

    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
        &self.line[start..self.pos]
    }

    fn token(&mut self) -> &'a str {
        self.take_while(|b| b != b' ' && b != b'\t')
    }
}

fn parse_sample(line: &str) -> Result<(String, Sample), String> {
    let mut cur = Cursor { line, pos: 0 };
    if !cur.peek().is_some_and(is_name_start) {
        return Err(format!(
            "expected a metric name, found `{}`",
            excerpt(&line[cur.pos..])
        ));
    }
    let name = cur.take_while(is_name_char);
    let after_name = cur.pos;
    cur.skip_blanks();
    let labels = if cur.peek() == Some(b'{') {
        cur.pos += 1;
        parse_labels(&mut cur, name)?
    } else {
        // No labels: the blanks just skipped separate the name from the value.
        cur.pos = after_name;
        Vec::new()
    };
    if !cur.skip_blanks() && cur.peek().is_some() {
        return Err(format!(
            "`{name}`: expected a blank before the value, found `{}`",
            excerpt(&line[cur.pos..])
        ));
    }
    let value_token = cur.token();
    if value_token.is_empty() {
        return Err(format!("`{name}` has no value"));
    }
    let value = parse_value(value_token).ok_or_else(|| {
        format!(
            "`{name}` has value `{}`, which is not a number",
            excerpt(value_token)
        )
    })?;
    cur.skip_blanks();
    let timestamp_ms = match cur.token() {
        "" => None,
        ts => Some(ts.parse::<i64>().map_err(|_| {
            format!(
                "`{name}` has timestamp `{}`; allowed: an integer of milliseconds",
                excerpt(ts)
            )
        })?),
    };
    cur.skip_blanks();
    if cur.peek().is_some() {
        return Err(format!(
            "`{name}` has unexpected text after its value: `{}`",
            excerpt(&line[cur.pos..])
        ));
    }
    Ok((
        name.to_string(),
        Sample {
            labels,
            value,
            timestamp_ms,
        },
    ))
}

/// Labels after the opening brace, up to and including the closing one.
fn parse_labels(cur: &mut Cursor<'_>, metric: &str) -> Result<Vec<(String, String)>, String> {
    let mut labels: Vec<(String, String)> = Vec::new();
    loop {
        cur.skip_blanks();
        if cur.peek() == Some(b'}') {
            cur.pos += 1;
            break;
        }
        if labels.len() == MAX_LABELS {
            return Err(format!("`{metric}` has more than {MAX_LABELS} labels"));
        }
        if !cur
            .peek()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        {
            return Err(format!("`{metric}`: expected a label name or `}}`"));
        }
        let label = cur.take_while(|b| b.is_ascii_alphanumeric() || b == b'_');
        cur.skip_blanks();
        if cur.peek() != Some(b'=') {
            return Err(format!("`{metric}`: label `{label}` has no `=`"));
        }
        cur.pos += 1;
        cur.skip_blanks();
        if cur.peek() != Some(b'"') {
            return Err(format!(
                "`{metric}`: value of label `{label}` is not quoted"
            ));
        }
        cur.pos += 1;
        let value = parse_label_value(cur)
            .map_err(|e| format!("`{metric}`: value of label `{label}` {e}"))?;
        labels.push((label.to_string(), value));
        cur.skip_blanks();
        match cur.peek() {
            Some(b',') => cur.pos += 1,
            Some(b'}') => {}
            _ => {
                return Err(format!(
                    "`{metric}`: expected `,` or `}}` after label `{label}`"
                ))
            }
        }
    }
    let mut names: Vec<&str> = labels.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("`{metric}` repeats label `{}`", pair[0]));
    }
    Ok(labels)
}

/// A quoted label value after its opening quote, with `\\`, `\"` and `\n` unescaped.
fn parse_label_value(cur: &mut Cursor<'_>) -> Result<String, String> {
    let mut value = String::new();
    let bytes = cur.line.as_bytes();
    let mut segment_start = cur.pos;
    while let Some(&b) = bytes.get(cur.pos) {
        match b {
            b'"' => {
                value.push_str(&cur.line[segment_start..cur.pos]);
                cur.pos += 1;
                return Ok(value);
            }
            b'\\' => {
                value.push_str(&cur.line[segment_start..cur.pos]);
                let unescaped = match bytes.get(cur.pos + 1) {
                    Some(b'\\') => '\\',
                    Some(b'"') => '"',
                    Some(b'n') => '\n',
                    Some(_) => {
                        return Err("has an invalid escape; allowed: \\\\, \\\", \\n".to_string())
                    }
                    None => return Err("ends inside an escape".to_string()),
                };
                value.push(unescaped);
                cur.pos += 2;
                segment_start = cur.pos;
            }
            _ => cur.pos += 1,
        }
    }
    Err("has no closing quote".to_string())
}

/// A sample value: a float, `NaN`, `+Inf` or `-Inf` (any case, as Prometheus
/// itself accepts).
pub fn parse_value(token: &str) -> Option<f64> {
    let special = [
        ("nan", f64::NAN),
        ("+nan", f64::NAN),
        ("-nan", f64::NAN),
        ("inf", f64::INFINITY),
        ("+inf", f64::INFINITY),
        ("-inf", f64::NEG_INFINITY),
    ];
    if let Some((_, v)) = special.iter().find(|(s, _)| token.eq_ignore_ascii_case(s)) {
        return Some(*v);
    }
    // Rust would also take "infinity"; plain decimal syntax only beyond the specials.
    if !token
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    token.parse::<f64>().ok()
}

/// A short, single-line piece of offending text for an error message.
fn excerpt(s: &str) -> String {
    const MAX: usize = 40;
    let mut out: String = s.chars().take(MAX).collect();
    if s.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}
