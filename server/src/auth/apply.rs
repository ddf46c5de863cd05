//! Applying auth changes from raft entries: every member runs the same
//! change on its store and gets the backend writes that persist it (the
//! applier adds them to the entry's batch). A failed change changes nothing.

use bytes::Bytes;
use kvd_api::authpb::{Role, User};
use kvd_api::etcdserverpb::InternalRaftRequest;
use prost::Message;

use super::{AUTH_ENABLED, AUTH_REVISION, AuthError, AuthStore, AuthWrites, ROOT, has_root};
use crate::backend::Table;
use crate::mvcc::meta;

impl AuthStore {
    /// Applies an auth change from a raft entry at `index`. Returns the
    /// backend writes (the caller adds them to the entry's batch) and, for
    /// Authenticate, the token. Nothing changes when it fails.
    pub fn apply(&self, r: &InternalRaftRequest, index: u64) -> Result<(AuthWrites, Option<String>), AuthError> {
        let mut inner = self.inner.write();
        let mut w: AuthWrites = Vec::new();
        let put_user = |w: &mut AuthWrites, u: &User| {
            w.push((Table::AuthUser, u.name.clone(), Some(Bytes::from(u.encode_to_vec()))));
        };
        let put_role = |w: &mut AuthWrites, r: &Role| {
            w.push((Table::AuthRole, r.name.clone(), Some(Bytes::from(r.encode_to_vec()))));
        };
        let mut token = None;
        if r.auth_enable.is_some() {
            if inner.enabled {
                return Ok((w, None));
            }
            let root = inner.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
            if !has_root(root) {
                return Err(AuthError::RootRoleNotExist);
            }
            inner.enabled = true;
            w.push((Table::Meta, AUTH_ENABLED.to_vec(), Some(Bytes::from_static(&[1]))));
        } else if r.auth_disable.is_some() {
            if !inner.enabled {
                return Ok((w, None));
            }
            inner.enabled = false;
            self.tokens.clear();
            w.push((Table::Meta, AUTH_ENABLED.to_vec(), Some(Bytes::from_static(&[0]))));
        } else if let Some(a) = &r.authenticate {
            if !inner.enabled {
                return Err(AuthError::AuthNotEnabled);
            }
            if !inner.users.contains_key(&a.name) {
                return Err(AuthError::AuthFailed);
            }
            let t = format!("{}.{index}", a.simple_token);
            self.tokens.assign(t.clone(), &a.name);
            // Issuing a token changes nothing persistent.
            return Ok((w, Some(t)));
        } else if let Some(a) = &r.auth_user_add {
            if a.name.is_empty() {
                return Err(AuthError::UserEmpty);
            }
            if inner.users.contains_key(&a.name) {
                return Err(AuthError::UserAlreadyExist);
            }
            let u = User {
                name: a.name.clone().into_bytes(),
                password: a.hashed_password.clone().into_bytes(),
                roles: Vec::new(),
                options: a.options,
            };
            put_user(&mut w, &u);
            inner.users.insert(a.name.clone(), u);
        } else if let Some(a) = &r.auth_user_delete {
            if inner.enabled && a.name == ROOT {
                return Err(AuthError::InvalidAuthMgmt);
            }
            inner.users.remove(&a.name).ok_or(AuthError::UserNotFound)?;
            self.tokens.revoke_user(&a.name);
            w.push((Table::AuthUser, a.name.clone().into_bytes(), None));
        } else if let Some(a) = &r.auth_user_change_password {
            let u = inner.users.get_mut(&a.name).ok_or(AuthError::UserNotFound)?;
            u.password = a.hashed_password.clone().into_bytes();
            if let Some(o) = &mut u.options {
                o.no_password = false;
            }
            let u = u.clone();
            self.tokens.revoke_user(&a.name);
            put_user(&mut w, &u);
        } else if let Some(a) = &r.auth_user_grant_role {
            if a.role != ROOT && !inner.roles.contains_key(&a.role) {
                return Err(AuthError::RoleNotFound);
            }
            let u = inner.users.get_mut(&a.user).ok_or(AuthError::UserNotFound)?;
            if let Err(at) = u.roles.binary_search(&a.role) {
                u.roles.insert(at, a.role.clone());
                let u = u.clone();
                put_user(&mut w, &u);
            }
        } else if let Some(a) = &r.auth_user_revoke_role {
            if inner.enabled && a.name == ROOT && a.role == ROOT {
                return Err(AuthError::InvalidAuthMgmt);
            }
            let u = inner.users.get_mut(&a.name).ok_or(AuthError::UserNotFound)?;
            let at = u.roles.iter().position(|r| *r == a.role).ok_or(AuthError::RoleNotGranted)?;
            u.roles.remove(at);
            let u = u.clone();
            put_user(&mut w, &u);
        } else if let Some(a) = &r.auth_role_add {
            if a.name.is_empty() {
                return Err(AuthError::RoleEmpty);
            }
            if inner.roles.contains_key(&a.name) {
                return Err(AuthError::RoleAlreadyExist);
            }
            let role = Role { name: a.name.clone().into_bytes(), key_permission: Vec::new() };
            put_role(&mut w, &role);
            inner.roles.insert(a.name.clone(), role);
        } else if let Some(a) = &r.auth_role_delete {
            if inner.enabled && a.role == ROOT {
                return Err(AuthError::InvalidAuthMgmt);
            }
            inner.roles.remove(&a.role).ok_or(AuthError::RoleNotFound)?;
            w.push((Table::AuthRole, a.role.clone().into_bytes(), None));
            // Users lose the role too.
            for u in inner.users.values_mut() {
                if let Some(at) = u.roles.iter().position(|r| *r == a.role) {
                    u.roles.remove(at);
                    put_user(&mut w, u);
                }
            }
        } else if let Some(a) = &r.auth_role_grant_permission {
            let p = a.perm.clone().ok_or(AuthError::PermissionNotGiven)?;
            let role = inner.roles.get_mut(&a.name).ok_or(AuthError::RoleNotFound)?;
            match role.key_permission.iter_mut().find(|q| q.key == p.key && q.range_end == p.range_end) {
                Some(q) => q.perm_type = p.perm_type,
                None => {
                    let at = role.key_permission.partition_point(|q| q.key < p.key);
                    role.key_permission.insert(at, p);
                }
            }
            let role = role.clone();
            put_role(&mut w, &role);
        } else if let Some(a) = &r.auth_role_revoke_permission {
            let role = inner.roles.get_mut(&a.role).ok_or(AuthError::RoleNotFound)?;
            let at = role
                .key_permission
                .iter()
                .position(|q| q.key == a.key && q.range_end == a.range_end)
                .ok_or(AuthError::PermissionNotGranted)?;
            role.key_permission.remove(at);
            let role = role.clone();
            put_role(&mut w, &role);
        } else {
            return Ok((w, None));
        }
        inner.revision += 1;
        w.push((Table::Meta, AUTH_REVISION.to_vec(), Some(meta::encode(inner.revision))));
        Ok((w, token.take()))
    }
}
