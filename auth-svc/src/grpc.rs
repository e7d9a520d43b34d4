//! The tonic adapter: decode, call [`Accounts`], map errors to `Status`.

use crate::accounts::{Accounts, Registration};
use parley::proto::auth_service_server::{AuthService, AuthServiceServer};
use parley::proto::{
    AuthReply, GetUsersReply, GetUsersRequest, LoginRequest, RegisterRequest, SearchUsersRequest,
    VerifyTokenReply, VerifyTokenRequest,
};
use tonic::{Request, Response, Status};

/// Service names whose health follows the backends.
pub const NAMES: &[&str] = &["parley.v1.AuthService"];

pub fn server(accounts: Accounts) -> AuthServiceServer<AuthGrpc> {
    AuthServiceServer::new(AuthGrpc { accounts })
}

#[derive(Debug, Clone)]
pub struct AuthGrpc {
    accounts: Accounts,
}

#[tonic::async_trait]
impl AuthService for AuthGrpc {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<AuthReply>, Status> {
        let r = req.into_inner();
        let session = self
            .accounts
            .register(Registration {
                username: r.username,
                email: r.email,
                password: r.password,
                display_name: r.display_name,
            })
            .await?;
        Ok(Response::new(AuthReply {
            token: session.token,
            user: Some(session.user),
        }))
    }

    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<AuthReply>, Status> {
        let r = req.into_inner();
        let session = self.accounts.login(&r.email, &r.password).await?;
        Ok(Response::new(AuthReply {
            token: session.token,
            user: Some(session.user),
        }))
    }

    async fn verify_token(
        &self,
        req: Request<VerifyTokenRequest>,
    ) -> Result<Response<VerifyTokenReply>, Status> {
        let (user, expires_at_ms) = self.accounts.verify(&req.into_inner().token).await?;
        Ok(Response::new(VerifyTokenReply {
            user: Some(user),
            expires_at_ms,
        }))
    }

    async fn get_users(
        &self,
        req: Request<GetUsersRequest>,
    ) -> Result<Response<GetUsersReply>, Status> {
        let users = self.accounts.users(&req.into_inner().ids).await?;
        Ok(Response::new(GetUsersReply { users }))
    }

    async fn search_users(
        &self,
        req: Request<SearchUsersRequest>,
    ) -> Result<Response<GetUsersReply>, Status> {
        let r = req.into_inner();
        let users = self.accounts.search(&r.query, r.limit as usize).await?;
        Ok(Response::new(GetUsersReply { users }))
    }
}
