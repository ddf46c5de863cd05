//! Auth: users, roles, key permissions and tokens, as etcd's `server/auth`.
//!
//! The store is the same on every member: every change is a raft entry,
//! applied here, and persisted by apply in the same backend batch as the
//! entry (users and roles in their tables, the enabled flag and the auth
//! revision in the meta table). Every change bumps the auth revision; a
//! request checked against an older revision is refused at apply with
//! "revision of auth store is old", so a stale check never grants anything.
//! Passwords are stored only as bcrypt hashes, computed before proposing.

mod apply;
pub mod perm;
pub mod token;

use std::collections::BTreeMap;

use bytes::Bytes;
use kvd_api::authpb::permission::Type as PermType;
use kvd_api::authpb::{Permission, Role, User};
use kvd_api::etcdserverpb::InternalRaftRequest;
use parking_lot::RwLock;
use prost::Message;

use crate::backend::{Backend, Table};
use crate::mvcc::{MvccError, meta};
pub use token::TokenStore;

/// Meta keys of the auth state.
pub const AUTH_ENABLED: &[u8] = b"authEnabled";
pub const AUTH_REVISION: &[u8] = b"authRevision";
pub const ROOT: &str = "root";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
}

/// Who a request runs as: resolved from its token before it is proposed or
/// served, and carried in the raft entry's header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub username: String,
    /// The auth revision the token was checked at (0: no user).
    pub revision: u64,
}

#[derive(Default)]
struct Inner {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

pub struct AuthStore {
    inner: RwLock<Inner>,
    pub tokens: TokenStore,
}

/// Backend writes an applied auth change makes (table, key, value or delete).
pub type AuthWrites = Vec<(Table, Vec<u8>, Option<Bytes>)>;

fn has_root(u: &User) -> bool {
    u.roles.iter().any(|r| r == ROOT)
}

impl AuthStore {
    pub fn new(token_ttl: std::time::Duration) -> Self {
        Self { inner: RwLock::new(Inner::default()), tokens: TokenStore::new(token_ttl) }
    }

    /// (Re)reads the auth state from the backend.
    pub fn load(&self, be: &Backend) -> Result<(), MvccError> {
        let mut inner = Inner {
            enabled: be.get(Table::Meta, AUTH_ENABLED)?.is_some_and(|v| v.as_ref() == [1]),
            revision: be.get(Table::Meta, AUTH_REVISION)?.and_then(|v| meta::decode(&v)).unwrap_or(0),
            ..Default::default()
        };
        let mut bad = None;
        be.scan_committed(Table::AuthUser, &[], None, |k, v| {
            match User::decode(v) {
                Ok(u) => {
                    inner.users.insert(String::from_utf8_lossy(k).into_owned(), u);
                }
                Err(_) => bad = Some(format!("user {:?}", String::from_utf8_lossy(k))),
            }
            true
        })?;
        be.scan_committed(Table::AuthRole, &[], None, |k, v| {
            match Role::decode(v) {
                Ok(r) => {
                    inner.roles.insert(String::from_utf8_lossy(k).into_owned(), r);
                }
                Err(_) => bad = Some(format!("role {:?}", String::from_utf8_lossy(k))),
            }
            true
        })?;
        if let Some(what) = bad {
            return Err(MvccError::Backend(crate::backend::BackendError::Storage(format!(
                "corrupt auth {what} in the backend"
            ))));
        }
        *self.inner.write() = inner;
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.inner.read().enabled
    }

    pub fn revision(&self) -> u64 {
        self.inner.read().revision
    }

    /// The user a token names, if auth is enabled and the token is live.
    /// `Ok(None)`: auth is disabled (everything is allowed).
    pub fn resolve(&self, token: Option<&str>) -> Result<Option<AuthInfo>, AuthError> {
        let inner = self.inner.read();
        if !inner.enabled {
            return Ok(None);
        }
        let Some(token) = token else { return Ok(Some(AuthInfo::default())) };
        let user = self.tokens.user(token).ok_or(AuthError::InvalidAuthToken)?;
        Ok(Some(AuthInfo { username: user, revision: inner.revision }))
    }

    /// The stored bcrypt hash check for Authenticate (done before proposing).
    pub fn check_password(&self, name: &str, password: &str) -> Result<(), AuthError> {
        let hash = {
            let inner = self.inner.read();
            if !inner.enabled {
                return Err(AuthError::AuthNotEnabled);
            }
            let u = inner.users.get(name).ok_or(AuthError::AuthFailed)?;
            if u.options.as_ref().is_some_and(|o| o.no_password) {
                return Err(AuthError::AuthFailed);
            }
            String::from_utf8_lossy(&u.password).into_owned()
        };
        match bcrypt::verify(password, &hash) {
            Ok(true) => Ok(()),
            _ => Err(AuthError::AuthFailed),
        }
    }

    /// Root only (anything goes while auth is disabled).
    pub fn check_admin(&self, info: &AuthInfo) -> Result<(), AuthError> {
        let inner = self.inner.read();
        if !inner.enabled {
            return Ok(());
        }
        if info.username.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let u = inner.users.get(&info.username).ok_or(AuthError::UserNotFound)?;
        if !has_root(u) {
            return Err(AuthError::PermissionDenied);
        }
        Ok(())
    }

    /// May `info` do `want` on `[key, range_end)`? Checked at the revision the
    /// request was resolved at.
    pub fn check_range(&self, info: &AuthInfo, key: &[u8], range_end: &[u8], want: PermType) -> Result<(), AuthError> {
        let inner = self.inner.read();
        if !inner.enabled {
            return Ok(());
        }
        if info.revision == 0 {
            return Err(AuthError::UserEmpty);
        }
        if info.revision < inner.revision {
            return Err(AuthError::AuthOldRevision);
        }
        let u = inner.users.get(&info.username).ok_or(AuthError::PermissionDenied)?;
        if has_root(u) {
            return Ok(());
        }
        let perms = u.roles.iter().filter_map(|r| inner.roles.get(r)).flat_map(|r| r.key_permission.iter());
        if perm::covers(perms, want, key, range_end) {
            return Ok(());
        }
        Err(AuthError::PermissionDenied)
    }

    pub fn is_root(&self, info: &AuthInfo) -> bool {
        self.inner.read().users.get(&info.username).is_some_and(has_root)
    }

    pub fn user(&self, name: &str) -> Result<User, AuthError> {
        self.inner.read().users.get(name).cloned().ok_or(AuthError::UserNotFound)
    }

    pub fn user_names(&self) -> Vec<String> {
        self.inner.read().users.keys().cloned().collect()
    }

    pub fn role_names(&self) -> Vec<String> {
        self.inner.read().roles.keys().cloned().collect()
    }

    /// A role's permissions; root has every key, as etcd shows it.
    pub fn role(&self, name: &str) -> Result<Vec<Permission>, AuthError> {
        if name == ROOT {
            return Ok(vec![Permission { perm_type: PermType::Readwrite as i32, key: Vec::new(), range_end: vec![0] }]);
        }
        self.inner.read().roles.get(name).map(|r| r.key_permission.clone()).ok_or(AuthError::RoleNotFound)
    }

    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.inner.read().users.get(user).is_some_and(|u| u.roles.iter().any(|r| r == role))
    }
}

/// True for raft requests the auth store applies.
pub fn is_auth_change(r: &InternalRaftRequest) -> bool {
    r.auth_enable.is_some()
        || r.auth_disable.is_some()
        || r.authenticate.is_some()
        || r.auth_user_add.is_some()
        || r.auth_user_delete.is_some()
        || r.auth_user_change_password.is_some()
        || r.auth_user_grant_role.is_some()
        || r.auth_user_revoke_role.is_some()
        || r.auth_role_add.is_some()
        || r.auth_role_delete.is_some()
        || r.auth_role_grant_permission.is_some()
        || r.auth_role_revoke_permission.is_some()
}
