//! The Auth service: enable/disable/status, Authenticate, users and roles.

use std::sync::Arc;

use kvd_api::etcdserverpb::auth_server::Auth;
use kvd_api::etcdserverpb::*;
use tonic::{Request, Response, Status};

use super::auth_info;
use crate::etcdserver::EtcdServer;
use crate::etcdserver::auth::AuthChange;

pub struct AuthService {
    pub server: Arc<EtcdServer>,
}

/// A change whose response carries only the header.
macro_rules! change {
    ($self:ident, $req:ident, $variant:expr, $resp:ident) => {{
        let creds = auth_info(&$req);
        let header = $self.server.auth_change(&creds, $variant($req.into_inner())).await?;
        Ok(Response::new($resp { header: Some(header) }))
    }};
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(&self, req: Request<AuthEnableRequest>) -> Result<Response<AuthEnableResponse>, Status> {
        change!(self, req, |_| AuthChange::Enable, AuthEnableResponse)
    }

    async fn auth_disable(&self, req: Request<AuthDisableRequest>) -> Result<Response<AuthDisableResponse>, Status> {
        change!(self, req, |_| AuthChange::Disable, AuthDisableResponse)
    }

    async fn auth_status(&self, req: Request<AuthStatusRequest>) -> Result<Response<AuthStatusResponse>, Status> {
        Ok(Response::new(self.server.auth_status(&auth_info(&req)).await?))
    }

    async fn authenticate(&self, req: Request<AuthenticateRequest>) -> Result<Response<AuthenticateResponse>, Status> {
        let r = req.into_inner();
        let (header, token) = self.server.authenticate(r.name, r.password).await?;
        Ok(Response::new(AuthenticateResponse { header: Some(header), token }))
    }

    async fn user_add(&self, req: Request<AuthUserAddRequest>) -> Result<Response<AuthUserAddResponse>, Status> {
        change!(self, req, AuthChange::UserAdd, AuthUserAddResponse)
    }

    async fn user_get(&self, req: Request<AuthUserGetRequest>) -> Result<Response<AuthUserGetResponse>, Status> {
        let creds = auth_info(&req);
        let roles = self.server.user_roles(&creds, &req.into_inner().name).await?;
        Ok(Response::new(AuthUserGetResponse { header: Some(self.server.header(0)), roles }))
    }

    async fn user_list(&self, req: Request<AuthUserListRequest>) -> Result<Response<AuthUserListResponse>, Status> {
        let users = self.server.auth_names(&auth_info(&req), true).await?;
        Ok(Response::new(AuthUserListResponse { header: Some(self.server.header(0)), users }))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        change!(self, req, AuthChange::UserDelete, AuthUserDeleteResponse)
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        change!(self, req, AuthChange::UserChangePassword, AuthUserChangePasswordResponse)
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        change!(self, req, AuthChange::UserGrantRole, AuthUserGrantRoleResponse)
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        change!(self, req, AuthChange::UserRevokeRole, AuthUserRevokeRoleResponse)
    }

    async fn role_add(&self, req: Request<AuthRoleAddRequest>) -> Result<Response<AuthRoleAddResponse>, Status> {
        change!(self, req, AuthChange::RoleAdd, AuthRoleAddResponse)
    }

    async fn role_get(&self, req: Request<AuthRoleGetRequest>) -> Result<Response<AuthRoleGetResponse>, Status> {
        let creds = auth_info(&req);
        let perm = self.server.role_permissions(&creds, &req.into_inner().role).await?;
        Ok(Response::new(AuthRoleGetResponse { header: Some(self.server.header(0)), perm }))
    }

    async fn role_list(&self, req: Request<AuthRoleListRequest>) -> Result<Response<AuthRoleListResponse>, Status> {
        let roles = self.server.auth_names(&auth_info(&req), false).await?;
        Ok(Response::new(AuthRoleListResponse { header: Some(self.server.header(0)), roles }))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        change!(self, req, AuthChange::RoleDelete, AuthRoleDeleteResponse)
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        change!(self, req, AuthChange::RoleGrantPermission, AuthRoleGrantPermissionResponse)
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        change!(self, req, AuthChange::RoleRevokePermission, AuthRoleRevokePermissionResponse)
    }
}
