//! Control API bearer tokens: the `[auth] tokens_file` of the coordinator
//! (lines `admin <token>`, `read <token>`, `wake <token>`), and the rules every token must
//! follow on both sides. Tokens are kept only as SHA-256 digests and compared
//! in constant time; no message ever contains one.

use std::path::{Path, PathBuf};

use ring::digest;

/// Shortest token accepted: shorter ones can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest token accepted: far more than any generator makes, far less than
/// the HTTP/2 header limits.
pub const MAX_TOKEN_LEN: usize = 512;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// List*, Get*, FollowEvents, Explain, and `/v1/endpoints`.
    Read,
    /// Waking a model (`WakeModel`, `POST /v1/models/NAME/wake`), a
    /// gateway's routing stream (`Gateway/Routes`) and `/v1/endpoints`:
    /// what a gateway in front of the replicas needs.
    Wake,
    /// Everything.
    Admin,
}

impl Access {
    /// The role's name in the tokens file.
    pub fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Wake => "wake",
            Access::Admin => "admin",
        }
    }
}

/// Why a token is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    #[error("is empty")]
    Empty,
    #[error("is {0} characters long; allowed: {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN}")]
    Length(usize),
    #[error("contains whitespace or a control or non-ASCII character; allowed: printable ASCII without spaces")]
    Characters,
}

/// Checks the shape of a token: 16..=512 printable ASCII characters, no spaces.
pub fn check_token(token: &str) -> Result<(), TokenProblem> {
    if token.is_empty() {
        return Err(TokenProblem::Empty);
    }
    if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&token.len()) {
        return Err(TokenProblem::Length(token.len()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenProblem::Characters);
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the tokens file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokens file {} line {line}: {why}", .path.display())]
    Line {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("tokens file {} holds no tokens; add lines `admin <token>` or `read <token>`, or unset [auth] tokens_file", .path.display())]
    NoTokens { path: PathBuf },
}

/// The tokens the coordinator accepts.
#[derive(Clone)]
pub struct TokenSet {
    digests: Vec<(Access, digest::Digest)>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSet({} tokens)", self.digests.len())
    }
}

impl TokenSet {
    /// Reads a tokens file.
    pub fn load(path: &Path) -> Result<TokenSet, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        TokenSet::parse(&text, path)
    }

    /// Parses the text of a tokens file; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<TokenSet, TokenFileError> {
        let mut digests: Vec<(Access, digest::Digest)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let bad = |why: String| TokenFileError::Line {
                path: path.to_path_buf(),
                line,
                why,
            };
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let mut words = content.split_whitespace();
            let (Some(kind), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad(
                    "expected `admin <token>`, `read <token>` or `wake <token>` (one token per line, no spaces in it)"
                        .into(),
                ));
            };
            let access = match kind {
                "admin" => Access::Admin,
                "read" => Access::Read,
                "wake" => Access::Wake,
                other => {
                    return Err(bad(format!(
                        "unknown access `{other}`; allowed: admin, read, wake"
                    )))
                }
            };
            check_token(token).map_err(|p| bad(format!("the token {p}")))?;
            let d = digest::digest(&digest::SHA256, token.as_bytes());
            if digests.iter().any(|(_, seen)| seen.as_ref() == d.as_ref()) {
                return Err(bad(
                    "this token is listed twice; list each token once".into()
                ));
            }
            digests.push((access, d));
        }
        if digests.is_empty() {
            return Err(TokenFileError::NoTokens {
                path: path.to_path_buf(),
            });
        }
        Ok(TokenSet { digests })
    }

    /// The access a presented token grants, or None. Every known token is
    /// compared, in constant time, whether or not an earlier one matched:
    /// the time taken says nothing about which token (or how much of it) was
    /// right, and comparing digests hides the length too.
    pub fn access_of(&self, presented: &str) -> Option<Access> {
        let d = digest::digest(&digest::SHA256, presented.as_bytes());
        let mut found: Option<Access> = None;
        for (access, known) in &self.digests {
            let same = constant_time_eq(known.as_ref(), d.as_ref());
            if same {
                found = Some(found.map_or(*access, |f| f.max(*access)));
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the compiler from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "adm1n-token-0123456789";
    const READ: &str = "read-token-0123456789";
    const WAKE: &str = "wake-token-0123456789";

    fn parse(text: &str) -> Result<TokenSet, TokenFileError> {
        TokenSet::parse(text, Path::new("/etc/gpufleet/tokens"))
    }

    #[test]
    fn tokens_grant_their_access_and_nothing_else() {
        let set = parse(&format!(
            "# operators\n\nadmin {ADMIN}\n  read   {READ}  \n"
        ))
        .unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(
            parse(&format!("wake {WAKE}\n")).unwrap().access_of(WAKE),
            Some(Access::Wake)
        );
        assert_eq!(set.access_of(ADMIN), Some(Access::Admin));
        assert_eq!(set.access_of(READ), Some(Access::Read));
        assert_eq!(set.access_of("read-token-012345678"), None);
        assert_eq!(set.access_of(""), None);
        assert_eq!(set.access_of(&format!("{READ}x")), None);
    }

    #[test]
    fn malformed_lines_are_named_and_tokens_never_echoed() {
        let e = parse(&format!("admin {ADMIN}\nwrite {READ}\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "tokens file /etc/gpufleet/tokens line 2: unknown access `write`; allowed: admin, read, wake"
        );
        let e = parse(&format!("admin {ADMIN} extra\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1: expected `admin <token>`"), "{e}");
        assert!(!e.contains(ADMIN), "{e}");
        let e = parse("read short\n").unwrap_err().to_string();
        assert!(
            e.contains("line 1: the token is 5 characters long; allowed: 16 to 512"),
            "{e}"
        );
        let e = parse("read\n").unwrap_err().to_string();
        assert!(e.contains("line 1: expected"), "{e}");
        let e = parse(&format!("admin {ADMIN}\nread {ADMIN}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2: this token is listed twice"), "{e}");
        let e = parse("# nothing\n\n").unwrap_err().to_string();
        assert!(e.contains("holds no tokens"), "{e}");
    }

    #[test]
    fn token_shape_is_checked() {
        assert_eq!(check_token(""), Err(TokenProblem::Empty));
        assert_eq!(check_token(&"x".repeat(15)), Err(TokenProblem::Length(15)));
        assert_eq!(check_token(&"x".repeat(16)), Ok(()));
        assert_eq!(check_token(&"x".repeat(512)), Ok(()));
        assert_eq!(
            check_token(&"x".repeat(1 << 20)),
            Err(TokenProblem::Length(1 << 20))
        );
        assert_eq!(
            check_token("has a space in it ok"),
            Err(TokenProblem::Characters)
        );
        assert_eq!(
            check_token("tab\tinside-the-token"),
            Err(TokenProblem::Characters)
        );
        assert_eq!(
            check_token("non-ascii-tökén-here"),
            Err(TokenProblem::Characters)
        );
    }

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
