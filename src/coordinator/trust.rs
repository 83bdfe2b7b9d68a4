//! What the coordinator believes a node about its replicas: only what it
//! assigned to that node. A replica id is bound to the node it was placed on;
//! after a coordinator restart (when the plan is rebuilt from what agents
//! report) a replica is adopted only if the agent shows the assignment
//! token the coordinator signed for that id on that node.
//!
//! The token is HMAC-SHA256 over (node, replica id, model) under a key kept
//! in the coordinator's store. A node holding a valid agent certificate can
//! still say anything about itself, but it cannot make up a token for a
//! replica it was never given, nor borrow one issued to another node.

use std::fmt;

use ring::hmac;

/// Marks the token format, so a later one can be told apart.
const TOKEN_PREFIX: &str = "v1.";

/// The coordinator's key for assignment tokens.
pub struct AssignmentKey(hmac::Key);

/// What an assignment token says about a (node, replica, model) claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    Valid,
    /// The agent sent none: it predates tokens, or its record does.
    Missing,
    /// Not one this coordinator signed for this node, replica and model.
    Invalid,
}

/// Why a node's report of a replica was not believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// The replica is assigned to another node.
    OtherNode,
    /// Not assigned here, and no token shows it ever was.
    NoToken,
    /// Not assigned here, and its token is not valid for this node.
    BadToken,
}

impl Refusal {
    /// The `reason` label of the refusal metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::OtherNode => "other_node",
            Refusal::NoToken => "no_token",
            Refusal::BadToken => "bad_token",
        }
    }

    pub fn from_check(check: TokenCheck) -> Option<Refusal> {
        match check {
            TokenCheck::Valid => None,
            TokenCheck::Missing => Some(Refusal::NoToken),
            TokenCheck::Invalid => Some(Refusal::BadToken),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AssignmentKey {
    pub fn new(secret: &[u8]) -> AssignmentKey {
        AssignmentKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The token for replica `replica` of `model`, assigned to `node`.
    pub fn token(&self, node: &str, replica: &str, model: &str) -> String {
        let tag = hmac::sign(&self.0, &message(node, replica, model));
        let mut out = String::with_capacity(TOKEN_PREFIX.len() + 64);
        out.push_str(TOKEN_PREFIX);
        for b in tag.as_ref() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Checks a token in constant time.
    pub fn check(&self, node: &str, replica: &str, model: &str, token: &str) -> TokenCheck {
        if token.is_empty() {
            return TokenCheck::Missing;
        }
        let Some(tag) = token.strip_prefix(TOKEN_PREFIX).and_then(decode_hex) else {
            return TokenCheck::Invalid;
        };
        match hmac::verify(&self.0, &message(node, replica, model), &tag) {
            Ok(()) => TokenCheck::Valid,
            Err(_) => TokenCheck::Invalid,
        }
    }
}

/// Node names and replica ids never hold NUL (both are checked), so the
/// fields cannot be shifted into one another.
fn message(node: &str, replica: &str, model: &str) -> Vec<u8> {
    format!("gpufleet assignment\0{node}\0{replica}\0{model}").into_bytes()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_valid_only_for_its_node_replica_model_and_key() {
        let key = AssignmentKey::new(&[1; 32]);
        let t = key.token("a1", "web-00001", "web");
        assert!(t.starts_with("v1.") && t.len() == 67, "{t}");
        assert_eq!(key.check("a1", "web-00001", "web", &t), TokenCheck::Valid);
        assert_eq!(key.check("a3", "web-00001", "web", &t), TokenCheck::Invalid);
        assert_eq!(key.check("a1", "web-00002", "web", &t), TokenCheck::Invalid);
        assert_eq!(key.check("a1", "web-00001", "api", &t), TokenCheck::Invalid);
        let other = AssignmentKey::new(&[2; 32]);
        assert_eq!(
            other.check("a1", "web-00001", "web", &t),
            TokenCheck::Invalid
        );
        assert_eq!(key.check("a1", "web-00001", "web", ""), TokenCheck::Missing);
        for junk in ["v1.", "v1.zz", "x", &t[..66], &format!("{t}0"), "v1.é"] {
            assert_eq!(
                key.check("a1", "web-00001", "web", junk),
                TokenCheck::Invalid,
                "{junk}"
            );
        }
    }
}
