//! Simple tokens, as etcd's `--auth-token simple`: random, unguessable
//! strings that name a user, valid for a TTL that each use renews. They live
//! in memory on every member (issued through raft, so any member accepts
//! them) and die with a restart; clients then authenticate again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// etcd's default simple token TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

pub struct TokenStore {
    ttl: Duration,
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl TokenStore {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, tokens: Mutex::new(HashMap::new()) }
    }

    /// A new random token (its user is bound when the Authenticate entry applies).
    pub fn generate() -> String {
        use rand::Rng;
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut rng = rand::rng();
        (0..16).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
    }

    /// Binds `token` (suffixed with the raft index, as etcd, so it is unique) to `user`.
    pub fn assign(&self, token: String, user: &str) {
        let mut t = self.tokens.lock();
        let now = Instant::now();
        t.retain(|_, (_, exp)| *exp > now);
        t.insert(token, (user.to_string(), now + self.ttl));
    }

    /// The user of a live token, renewing it.
    pub fn user(&self, token: &str) -> Option<String> {
        let mut t = self.tokens.lock();
        let now = Instant::now();
        let (user, exp) = t.get_mut(token)?;
        if *exp <= now {
            t.remove(token);
            return None;
        }
        *exp = now + self.ttl;
        Some(user.clone())
    }

    /// Drops every token of `user` (deleted, or its password changed).
    pub fn revoke_user(&self, user: &str) {
        self.tokens.lock().retain(|_, (u, _)| u != user);
    }

    /// Drops every token (auth disabled).
    pub fn clear(&self) {
        self.tokens.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_renew_and_are_revoked() {
        let s = TokenStore::new(Duration::from_millis(200));
        let a = TokenStore::generate();
        assert_eq!(a.len(), 16);
        assert_ne!(a, TokenStore::generate());
        s.assign(format!("{a}.1"), "alice");
        assert_eq!(s.user(&format!("{a}.1")).as_deref(), Some("alice"));
        assert_eq!(s.user("forged.1"), None);
        std::thread::sleep(Duration::from_millis(120));
        assert!(s.user(&format!("{a}.1")).is_some(), "renewed by use");
        std::thread::sleep(Duration::from_millis(120));
        assert!(s.user(&format!("{a}.1")).is_some());
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(s.user(&format!("{a}.1")), None, "expired");
        s.assign("t.2".into(), "bob");
        s.revoke_user("bob");
        assert_eq!(s.user("t.2"), None);
    }
}
