//! Tokens of agents and REST publishers. The relay keeps only SHA-256
//! digests of them; a presented token is hashed and compared with every
//! configured digest in constant time.

use ring::digest::{SHA256, digest};

/// Hex SHA-256 of a token, as written in `auth.token_sha256`.
pub fn hash_token(token: &str) -> String {
    digest(&SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Compares without an early exit, so timing tells nothing of where two
/// digests differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Clone, Default)]
pub struct TokenVerifier {
    digests: Vec<[u8; 32]>,
}

impl TokenVerifier {
    /// Digests that do not parse are skipped (config validation refuses them).
    pub fn new(hex_digests: &[String]) -> Self {
        TokenVerifier {
            digests: hex_digests.iter().filter_map(|h| parse_hex(h)).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn verify(&self, token: &str) -> bool {
        let presented: [u8; 32] = match digest(&SHA256, token.as_bytes()).as_ref().try_into() {
            Ok(bytes) => bytes,
            Err(_) => return false,
        };
        // Check every digest, whatever matched, to keep timing flat.
        self.digests.iter().fold(false, |found, known| {
            found | constant_time_eq(&presented, known)
        })
    }
}

/// A new random token: 32 bytes, hex.
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_only_configured_tokens() {
        let verifier = TokenVerifier::new(&[hash_token("right"), "zz".repeat(32)]);
        assert!(verifier.verify("right"));
        assert!(!verifier.verify("wrong"));
        assert!(!verifier.verify(""));
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(generate_token().len(), 64);
    }
}
