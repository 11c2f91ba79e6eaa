//! The bearer token: whoever has it is admin (there is no RBAC), so a short one is refused
//! wherever a token enters the server (the data directory's `token` file, [`crate::ApiService`]).

use std::sync::Arc;

use crate::error::Error;

/// Fewest bytes a token may have: 256 bits when each byte is random.
pub const MIN_TOKEN_BYTES: usize = 32;

/// A bearer token of at least [`MIN_TOKEN_BYTES`] bytes, without surrounding whitespace.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Checks `value` (trimmed); `source` says where it came from, for the error.
    pub fn parse(value: &str, source: &str) -> Result<Token, Error> {
        let value = value.trim();
        if value.len() < MIN_TOKEN_BYTES {
            return Err(Error::WeakToken(format!(
                "the token from {source} has {} bytes; at least {MIN_TOKEN_BYTES} are required",
                value.len()
            )));
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::WeakToken(format!(
                "the token from {source} contains whitespace or control characters, which an \
                 HTTP Authorization header cannot carry"
            )));
        }
        Ok(Token(Arc::from(value)))
    }

    /// A new random token (64 hex digits).
    pub fn generate() -> Token {
        let mut s = String::new();
        while s.len() < 2 * MIN_TOKEN_BYTES {
            s.push_str(&uuid::Uuid::new_v4().simple().to_string());
        }
        Token(Arc::from(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this token, in time independent of where they differ.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_tokens_are_refused() {
        let e = Token::parse("secret", "the test").expect_err("too short");
        assert_eq!(
            e.to_string(),
            "weak token: the token from the test has 6 bytes; at least 32 are required"
        );
        assert!(Token::parse(&"a".repeat(31), "t").is_err());
        assert!(Token::parse(&format!(" {} \n", "a".repeat(32)), "t").is_ok());
        assert!(Token::parse(&format!("{} {}", "a".repeat(16), "b".repeat(16)), "t").is_err());
    }

    #[test]
    fn generated_tokens_are_long_and_compare_exactly() {
        let t = Token::generate();
        assert_eq!(t.as_str().len(), 64);
        assert!(Token::parse(t.as_str(), "t").is_ok());
        assert!(t.matches(t.as_str()));
        assert!(!t.matches(&t.as_str()[1..]));
        assert_ne!(Token::generate(), t);
        assert_eq!(format!("{t:?}"), "Token(..)");
    }
}
