//! Shared secrets a request may present (server API keys, the metrics token).

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// Secrets kept and compared as their SHA-256: the comparison takes the same time whatever
/// the presented value's length or which key it matches, so timing tells an attacker nothing.
#[derive(Default)]
pub(crate) struct Keys(Vec<[u8; 32]>);

impl Keys {
    /// The non-empty ones of `keys`.
    pub(crate) fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        Self(
            keys.into_iter()
                .filter(|k| !k.is_empty())
                .map(|k| Sha256::digest(k.as_bytes()).into())
                .collect(),
        )
    }

    /// Whether no key is set, so nothing is allowed.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `presented` is one of the keys; every key is compared, in constant time.
    pub(crate) fn allows(&self, presented: Option<&str>) -> bool {
        let Some(presented) = presented else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let hit = self
            .0
            .iter()
            .fold(Choice::from(0), |hit, key| hit | key.ct_eq(&digest));
        bool::from(hit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_configured_key_is_allowed() {
        let keys = Keys::new(["first-key", "", "second-key"]);
        assert!(keys.allows(Some("first-key")));
        assert!(keys.allows(Some("second-key")));
        for wrong in ["", "first-ke", "first-key ", "FIRST-KEY"] {
            assert!(!keys.allows(Some(wrong)), "{wrong:?}");
        }
        assert!(!keys.allows(None));
        let none = Keys::new([""]);
        assert!(none.is_empty() && !none.allows(Some("")));
    }
}
