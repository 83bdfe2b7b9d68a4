//! One bad value in a TOML document (a config file or a model spec), told in
//! one line that names the key, its line, and what is allowed; plus the value
//! checks every document shares, so each rule is written once.

use std::fmt;
use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::units::{format_duration, parse_duration, parse_size};

/// What is wrong with a TOML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Not TOML at all.
    Syntax {
        line: Option<usize>,
        message: String,
    },
    /// A key the document does not know (often a typo).
    UnknownKey {
        line: Option<usize>,
        key: String,
        /// Where the key sits, e.g. "the model spec" or "[server]".
        table: String,
        allowed: Vec<String>,
    },
    /// A known key with a wrong type or a value outside what is allowed.
    Invalid {
        line: Option<usize>,
        /// Dotted path of the key (`scaling.max_replicas`) or a flag (`--node-name`).
        key: String,
        /// The whole sentence, naming the key.
        message: String,
    },
}

impl Problem {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem::Invalid {
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }

    /// The 1-based line the problem is on, when the document says.
    pub fn line(&self) -> Option<usize> {
        match self {
            Problem::Syntax { line, .. }
            | Problem::UnknownKey { line, .. }
            | Problem::Invalid { line, .. } => *line,
        }
    }

    /// The key at fault, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Problem::Syntax { .. } => None,
            Problem::UnknownKey { key, .. } | Problem::Invalid { key, .. } => Some(key),
        }
    }

    /// Fills in the line of the key from the document, for problems found
    /// after parsing (range checks), which only know the key's path.
    pub fn locate(mut self, src: &str) -> Problem {
        if let Problem::Invalid { line, key, .. } = &mut self {
            if line.is_none() {
                *line = line_of_key(src, key);
            }
        }
        self
    }

    /// Turns a TOML or serde error into a problem naming the key, with
    /// `document` ("the model spec", "the agent config") for top-level keys.
    pub fn from_toml(src: &str, err: &toml::de::Error, document: &str) -> Problem {
        let line = err.span().map(|span| line_at(src, span.start));
        let message = err.message().trim().to_string();
        let Ok(table) = DeTable::parse(src) else {
            let mut message = first_line(&message);
            // The parser says "duplicate key" without saying which.
            if let Some(key) = err.span().and_then(|span| src.get(span)) {
                if message == "duplicate key" {
                    message = format!("duplicate key `{}`", key.trim());
                }
            }
            return Problem::Syntax { line, message };
        };
        let path = err
            .span()
            .and_then(|span| key_path_at(table.get_ref(), &span))
            .unwrap_or_default();

        if let Some(rest) = message.strip_prefix("unknown field `") {
            let (key, expected) = rest.split_once('`').unwrap_or((rest, ""));
            let parent = path.rsplit_once('.').map(|(parent, _)| parent);
            return Problem::UnknownKey {
                line,
                key: key.to_string(),
                table: match parent {
                    Some(parent) => format!("[{parent}]"),
                    None => document.to_string(),
                },
                allowed: backticked(expected),
            };
        }
        if path.is_empty() {
            return Problem::Syntax {
                line,
                message: first_line(&message),
            };
        }
        Problem::Invalid {
            line,
            message: format!("{path} {}", describe_type_error(&message)),
            key: path,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line() {
            write!(f, "line {line}: ")?;
        }
        match self {
            Problem::Syntax { message, .. } => write!(f, "not valid TOML: {message}"),
            Problem::UnknownKey {
                key,
                table,
                allowed,
                ..
            } => {
                write!(f, "unknown key `{key}` in {table}")?;
                if !allowed.is_empty() {
                    write!(f, "; allowed keys: {}", allowed.join(", "))?;
                }
                Ok(())
            }
            Problem::Invalid { message, .. } => f.write_str(message),
        }
    }
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().to_string()
}

/// The names serde lists after "expected one of": `a`, `b`, `c`.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Rewrites serde's "invalid type: integer `3`, expected a string" in the
/// document's terms: "must be a string, not integer `3`".
fn describe_type_error(message: &str) -> String {
    let Some(rest) = message.strip_prefix("invalid type: ") else {
        return format!("is invalid: {}", first_line(message));
    };
    let (found, expected) = rest
        .split_once(", expected ")
        .unwrap_or((rest, "another type"));
    let expected = match expected.trim() {
        "i64" | "u64" | "u32" | "i32" | "u16" | "usize" => "a whole number",
        "f64" => "a number",
        "a boolean" | "bool" => "true or false",
        "a sequence" => "a list",
        "a map" => "a table",
        e if e.starts_with("struct ") => "a table",
        e => e,
    };
    format!("must be {expected}, not {found}")
}

/// 1-based line of a byte offset.
fn line_at(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted path of the key whose name or value covers `span`. Tables are
/// searched depth first because a `[table]`'s own span is only its header.
fn key_path_at(table: &DeTable<'_>, span: &Range<usize>) -> Option<String> {
    let covers = |s: Range<usize>| s.start <= span.start && span.end <= s.end.max(s.start + 1);
    for (key, value) in table.iter() {
        if covers(key.span()) {
            return Some(key.get_ref().to_string());
        }
        if let DeValue::Table(inner) = value.get_ref() {
            if let Some(inner) = key_path_at(inner, span) {
                return Some(format!("{}.{inner}", key.get_ref()));
            }
        }
        if covers(value.span()) {
            if let DeValue::Array(items) = value.get_ref() {
                if let Some(i) = items.iter().position(|item| covers(item.span())) {
                    return Some(format!("{}[{i}]", key.get_ref()));
                }
            }
            return Some(key.get_ref().to_string());
        }
    }
    None
}

/// 1-based line of the key at a dotted path (`scaling.max_replicas`);
/// `server.command[0]` is looked up as `server.command`.
fn line_of_key(src: &str, path: &str) -> Option<usize> {
    let table = DeTable::parse(src).ok()?;
    let path = path.split('[').next().unwrap_or(path);
    let mut current: &DeTable<'_> = table.get_ref();
    let mut found: Option<&Spanned<_>> = None;
    for segment in path.split('.') {
        let (key, value) = current.iter().find(|(k, _)| k.get_ref() == segment)?;
        found = Some(key);
        match value.get_ref() {
            DeValue::Table(t) => current = t,
            _ => break,
        }
    }
    found.map(|key| line_at(src, key.span().start))
}

// ---- value checks shared by the model spec and both config files ----

/// An integer key within `allowed`; negatives say so plainly.
pub fn int_in<T>(key: &str, value: i64, allowed: RangeInclusive<T>) -> Result<T, Problem>
where
    T: TryFrom<i64> + Into<i64> + Copy + fmt::Display,
{
    let (lo, hi) = (*allowed.start(), *allowed.end());
    if value < 0 {
        return Err(Problem::invalid(
            key,
            format!("{key} = {value} must be ≥ 0; allowed: {lo}..={hi}"),
        ));
    }
    if value < lo.into() || value > hi.into() {
        return Err(Problem::invalid(
            key,
            format!("{key} = {value} is out of range; allowed: {lo}..={hi}"),
        ));
    }
    T::try_from(value).map_err(|_| {
        Problem::invalid(
            key,
            format!("{key} = {value} is out of range; allowed: {lo}..={hi}"),
        )
    })
}

/// A duration key within `allowed`, both ends included.
pub fn duration_in(
    key: &str,
    value: &str,
    allowed: RangeInclusive<Duration>,
) -> Result<Duration, Problem> {
    let d = parse_duration(value).map_err(|e| Problem::invalid(key, format!("{key} {e}")))?;
    if !allowed.contains(&d) {
        return Err(Problem::invalid(
            key,
            format!(
                "{key} = \"{}\" is out of range; allowed: {}..={}",
                value.trim(),
                format_duration(*allowed.start()),
                format_duration(*allowed.end())
            ),
        ));
    }
    Ok(d)
}

/// A size key, parsed.
pub fn size(key: &str, value: &str) -> Result<u64, Problem> {
    parse_size(value).map_err(|e| Problem::invalid(key, format!("{key} {e}")))
}

/// An `ip:port` key.
pub fn socket_addr(key: &str, value: &str) -> Result<std::net::SocketAddr, Problem> {
    value.trim().parse().map_err(|_| {
        Problem::invalid(
            key,
            format!("{key} `{value}` is not an address; use ip:port, e.g. \"127.0.0.1:7462\""),
        )
    })
}

/// A non-empty path string; empty means "not set" (as in `run_as = ""`).
pub fn optional_path(value: Option<String>) -> Option<std::path::PathBuf> {
    value
        .filter(|v| !v.trim().is_empty())
        .map(std::path::PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: Option<String>,
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: Option<i64>,
    }

    fn problem(src: &str) -> Problem {
        let err = toml::from_str::<Doc>(src).unwrap_err();
        Problem::from_toml(src, &err, "the test doc")
    }

    #[test]
    fn unknown_top_level_key_names_line_and_allowed_keys() {
        let p = problem("name = \"a\"\n\nnmae = \"b\"\n");
        assert_eq!(
            p.to_string(),
            "line 3: unknown key `nmae` in the test doc; allowed keys: name, inner"
        );
        assert_eq!(p.key(), Some("nmae"));
    }

    #[test]
    fn unknown_nested_key_names_its_table() {
        let p = problem("[inner]\ncount = 1\ncuont = 2\n");
        assert_eq!(
            p.to_string(),
            "line 3: unknown key `cuont` in [inner]; allowed keys: count"
        );
    }

    #[test]
    fn wrong_type_names_the_key_in_plain_words() {
        let p = problem("[inner]\ncount = \"three\"\n");
        let text = p.to_string();
        assert!(
            text.starts_with("line 2: inner.count must be a whole number"),
            "{text}"
        );
        let p = problem("inner = 5\n");
        assert!(p.to_string().contains("inner must be a table"), "{p}");
    }

    #[test]
    fn broken_toml_is_a_syntax_problem_with_a_line() {
        let p = problem("name = \"a\"\ncount = \n");
        assert!(matches!(p, Problem::Syntax { line: Some(2), .. }), "{p:?}");
        assert!(p.to_string().starts_with("line 2: not valid TOML"), "{p}");
    }

    #[test]
    fn late_problems_find_their_line() {
        let src = "name = \"a\"\n[inner]\n# comment\ncount = 7\n";
        let p = Problem::invalid("inner.count", "inner.count = 7 is out of range").locate(src);
        assert_eq!(p.line(), Some(4));
        let p = Problem::invalid("inner.missing", "x").locate(src);
        assert_eq!(p.line(), None);
    }

    #[test]
    fn integer_checks_say_the_range() {
        assert_eq!(int_in::<u32>("k", 3, 1..=5), Ok(3));
        let neg = int_in::<u32>("a.b", -1, 0..=64).unwrap_err().to_string();
        assert_eq!(neg, "a.b = -1 must be ≥ 0; allowed: 0..=64");
        let big = int_in::<u32>("a.b", 500, 0..=64).unwrap_err().to_string();
        assert_eq!(big, "a.b = 500 is out of range; allowed: 0..=64");
    }

    #[test]
    fn duration_checks_say_the_range() {
        let lo = Duration::from_millis(100);
        let hi = Duration::from_secs(60);
        assert_eq!(duration_in("t", "1s", lo..=hi), Ok(Duration::from_secs(1)));
        let err = duration_in("t", "2m", lo..=hi).unwrap_err().to_string();
        assert_eq!(err, "t = \"2m\" is out of range; allowed: 100ms..=1m");
        let err = duration_in("t", "soon", lo..=hi).unwrap_err().to_string();
        assert!(err.starts_with("t `soon` is not a duration"), "{err}");
    }
}
