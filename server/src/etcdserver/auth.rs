//! The Auth service's server side. Changes go through raft (with the
//! caller in the entry's header; apply checks that it is root); passwords
//! are hashed with bcrypt here, before proposing, so the log and the backend
//! only ever see hashes. Reads are served locally after ReadIndex.

use kvd_api::etcdserverpb::{
    AuthRoleAddRequest, AuthRoleDeleteRequest, AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserChangePasswordRequest, AuthUserDeleteRequest,
    AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest, InternalAuthenticateRequest, InternalRaftRequest,
    ResponseHeader,
};

use super::kv::{Credentials, request_header, unexpected};
use super::{EtcdServer, ServerError};
use crate::apply::ApplyOutput;
use crate::auth::TokenStore;

/// One auth change, as a raft request.
pub enum AuthChange {
    Enable,
    Disable,
    UserAdd(AuthUserAddRequest),
    UserDelete(AuthUserDeleteRequest),
    UserChangePassword(AuthUserChangePasswordRequest),
    UserGrantRole(AuthUserGrantRoleRequest),
    UserRevokeRole(AuthUserRevokeRoleRequest),
    RoleAdd(AuthRoleAddRequest),
    RoleDelete(AuthRoleDeleteRequest),
    RoleGrantPermission(AuthRoleGrantPermissionRequest),
    RoleRevokePermission(AuthRoleRevokePermissionRequest),
}

async fn hash(password: String, cost: u32) -> Result<String, ServerError> {
    tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))?
        .map_err(|e| ServerError::Internal(format!("hashing the password: {e}")))
}

impl EtcdServer {
    async fn propose_auth(
        &self,
        creds: &Credentials,
        mut req: InternalRaftRequest,
    ) -> Result<ApplyOutput, ServerError> {
        let user = self.preflight(creds)?;
        req.header = request_header(&user);
        self.propose(req).await
    }

    /// Applies one auth change; returns the response header.
    pub async fn auth_change(&self, creds: &Credentials, change: AuthChange) -> Result<ResponseHeader, ServerError> {
        let mut req = InternalRaftRequest::default();
        match change {
            AuthChange::Enable => req.auth_enable = Some(Default::default()),
            AuthChange::Disable => req.auth_disable = Some(Default::default()),
            AuthChange::UserAdd(mut r) => {
                if !r.options.is_some_and(|o| o.no_password) {
                    r.hashed_password = hash(std::mem::take(&mut r.password), self.cfg.bcrypt_cost).await?;
                }
                r.password.clear();
                req.auth_user_add = Some(r);
            }
            AuthChange::UserDelete(r) => req.auth_user_delete = Some(r),
            AuthChange::UserChangePassword(mut r) => {
                r.hashed_password = hash(std::mem::take(&mut r.password), self.cfg.bcrypt_cost).await?;
                req.auth_user_change_password = Some(r);
            }
            AuthChange::UserGrantRole(r) => req.auth_user_grant_role = Some(r),
            AuthChange::UserRevokeRole(r) => req.auth_user_revoke_role = Some(r),
            AuthChange::RoleAdd(r) => req.auth_role_add = Some(r),
            AuthChange::RoleDelete(r) => req.auth_role_delete = Some(r),
            AuthChange::RoleGrantPermission(r) => req.auth_role_grant_permission = Some(r),
            AuthChange::RoleRevokePermission(r) => req.auth_role_revoke_permission = Some(r),
        }
        match self.propose_auth(creds, req).await? {
            ApplyOutput::Auth(_) => Ok(self.header(0)),
            other => Err(unexpected(other)),
        }
    }

    /// Authenticate: the password is checked here (bcrypt, off the async
    /// workers), then a token is issued through raft so every member knows it.
    pub async fn authenticate(&self, name: String, password: String) -> Result<(ResponseHeader, String), ServerError> {
        // As etcd: the password is checked against a store that has applied
        // everything committed before the call (a lagging follower would not
        // yet know of an `auth enable` or a new user).
        self.linearizable_read_notify().await?;
        let store = self.auth.clone();
        let who = name.clone();
        tokio::task::spawn_blocking(move || store.check_password(&who, &password))
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))??;
        let simple_token = TokenStore::generate();
        let req = InternalRaftRequest {
            authenticate: Some(InternalAuthenticateRequest { name, password: String::new(), simple_token }),
            ..Default::default()
        };
        match self.propose(req).await? {
            ApplyOutput::Auth(Some(token)) => Ok((self.header(0), token)),
            other => Err(unexpected(other)),
        }
    }

    pub async fn auth_status(&self, creds: &Credentials) -> Result<AuthStatusResponse, ServerError> {
        let user = self.check_auth(creds)?;
        self.check_admin(&user)?;
        self.linearizable_read_notify().await?;
        Ok(AuthStatusResponse {
            header: Some(self.header(0)),
            enabled: self.auth.enabled(),
            auth_revision: self.auth.revision(),
        })
    }

    /// UserGet: root, or the user asking about itself.
    pub async fn user_roles(&self, creds: &Credentials, name: &str) -> Result<Vec<String>, ServerError> {
        let user = self.check_auth(creds)?;
        if let Err(e) = self.check_admin(&user)
            && user.as_ref().is_none_or(|u| u.username != name)
        {
            return Err(e);
        }
        self.linearizable_read_notify().await?;
        Ok(self.auth.user(name)?.roles)
    }

    /// RoleGet: root, or a user holding the role.
    pub async fn role_permissions(
        &self,
        creds: &Credentials,
        role: &str,
    ) -> Result<Vec<kvd_api::authpb::Permission>, ServerError> {
        let user = self.check_auth(creds)?;
        if let Err(e) = self.check_admin(&user)
            && user.as_ref().is_none_or(|u| !self.auth.has_role(&u.username, role))
        {
            return Err(e);
        }
        self.linearizable_read_notify().await?;
        Ok(self.auth.role(role)?)
    }

    /// UserList (users) or RoleList (roles); root only.
    pub async fn auth_names(&self, creds: &Credentials, users: bool) -> Result<Vec<String>, ServerError> {
        let user = self.check_auth(creds)?;
        self.check_admin(&user)?;
        self.linearizable_read_notify().await?;
        Ok(if users { self.auth.user_names() } else { self.auth.role_names() })
    }

    /// Root only (maintenance and membership operations, as etcd guards them).
    pub fn require_admin(&self, creds: &Credentials) -> Result<(), ServerError> {
        let user = self.check_auth(creds)?;
        self.check_admin(&user)
    }

    /// False when auth is enabled and `token` is not (yet) known here.
    pub fn token_known(&self, token: &str) -> bool {
        !self.auth.enabled() || self.auth.tokens.user(token).is_some()
    }

    pub fn auth_revision(&self) -> u64 {
        self.auth.revision()
    }

    /// Watch create: read permission on the watched range.
    pub fn check_watch(&self, creds: &Credentials, key: &[u8], range_end: &[u8]) -> Result<(), ServerError> {
        let user = self.check_auth(creds)?;
        self.check_read(&user, key, range_end)
    }
}
