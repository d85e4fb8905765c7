//! The admin API on the local Unix socket.
//!
//! Callers are authorised by their peer uid (SO_PEERCRED, read by tonic for each
//! connection): configured admins, or, when none are configured, root and the control
//! plane's own uid. The admin's name is recorded as the actor of what they do.
//!
//! This file authorises each call and hands it to the function of its area (one module
//! per command group); the areas decode, validate, act and answer.

use std::sync::Arc;

use leash_proto::reason::Reason;
use leash_proto::v1;
use leash_proto::v1::admin_server::Admin;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::state::Shared;

mod approvals;
mod audit_export;
mod backup;
mod check;
mod credentials;
mod hosts;
mod join_tokens;
mod keys;
mod leases;
mod oidc;
mod owners;
mod policy;
mod reports;
mod secrets;
mod workloads;

use backup::BackupStream;
use leases::ProgressStream;
use reports::EventStream;

/// The service.
#[derive(Debug, Clone)]
pub struct AdminApi {
    s: Arc<Shared>,
}

impl AdminApi {
    /// Wrap the shared state.
    pub fn new(s: Arc<Shared>) -> AdminApi {
        AdminApi { s }
    }

    /// The admin name of the caller, or a denial.
    fn admin<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let uid = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .map(|c| c.uid())
            .ok_or_else(|| {
                Reason::Denied.status("cannot tell who is calling (no peer credentials)")
            })?;
        let admins = &self.s.config.admins;
        if let Some(name) = admins.get(&uid) {
            return Ok(name.clone());
        }
        let own = nix::unistd::geteuid().as_raw();
        if admins.is_empty() && (uid == 0 || uid == own) {
            return Ok(nix::unistd::User::from_uid(uid.into())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| format!("uid:{uid}")));
        }
        Err(Reason::Denied.status(format!(
            "uid {uid} is not a Leash admin; ask an admin to add you under [admins] in the control-plane config"
        )))
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn create_join_token(
        &self,
        req: Request<v1::CreateJoinTokenRequest>,
    ) -> Result<Response<v1::CreateJoinTokenResponse>, Status> {
        let actor = self.admin(&req)?;
        join_tokens::create(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_join_tokens(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListJoinTokensResponse>, Status> {
        self.admin(&req)?;
        join_tokens::list(&self.s).await.map(Response::new)
    }

    async fn revoke_join_token(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let actor = self.admin(&req)?;
        join_tokens::revoke(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn add_workload(
        &self,
        req: Request<v1::AddWorkloadRequest>,
    ) -> Result<Response<v1::Workload>, Status> {
        let actor = self.admin(&req)?;
        workloads::add(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_workloads(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListWorkloadsResponse>, Status> {
        self.admin(&req)?;
        workloads::list(&self.s).await.map(Response::new)
    }

    async fn get_workload(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::Workload>, Status> {
        self.admin(&req)?;
        workloads::get(&self.s, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_workload(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let actor = self.admin(&req)?;
        workloads::remove(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn set_workload_disabled(
        &self,
        req: Request<v1::SetDisabledRequest>,
    ) -> Result<Response<v1::Workload>, Status> {
        let actor = self.admin(&req)?;
        workloads::set_disabled(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn transfer_workload(
        &self,
        req: Request<v1::TransferRequest>,
    ) -> Result<Response<v1::Workload>, Status> {
        let actor = self.admin(&req)?;
        workloads::transfer(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn add_credential(
        &self,
        req: Request<v1::Credential>,
    ) -> Result<Response<v1::Credential>, Status> {
        let actor = self.admin(&req)?;
        credentials::add(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_credentials(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListCredentialsResponse>, Status> {
        self.admin(&req)?;
        credentials::list(&self.s).await.map(Response::new)
    }

    async fn get_credential(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::CredentialDetail>, Status> {
        self.admin(&req)?;
        credentials::get(&self.s, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_credential(
        &self,
        req: Request<v1::RemoveCredentialRequest>,
    ) -> Result<Response<v1::RemoveCredentialResponse>, Status> {
        let actor = self.admin(&req)?;
        credentials::remove(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_hosts(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListHostsResponse>, Status> {
        self.admin(&req)?;
        hosts::list(&self.s).await.map(Response::new)
    }

    async fn evict_host(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let actor = self.admin(&req)?;
        hosts::evict(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_leases(
        &self,
        req: Request<v1::ListLeasesRequest>,
    ) -> Result<Response<v1::ListLeasesResponse>, Status> {
        self.admin(&req)?;
        leases::list(&self.s, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_lease(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::LeaseDetail>, Status> {
        self.admin(&req)?;
        leases::get(&self.s, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn revoke(
        &self,
        req: Request<v1::RevokeRequest>,
    ) -> Result<Response<v1::RevokeResponse>, Status> {
        let actor = self.admin(&req)?;
        leases::revoke(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    type WaitRevocationStream = ProgressStream;

    async fn wait_revocation(
        &self,
        req: Request<v1::WaitRevocationRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        self.admin(&req)?;
        leases::wait_revocation(self.s.clone(), req.into_inner())
            .await
            .map(Response::new)
    }

    async fn introspect(
        &self,
        req: Request<v1::IntrospectRequest>,
    ) -> Result<Response<v1::IntrospectResponse>, Status> {
        self.admin(&req)?;
        leases::introspect(&self.s, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn policy_check(
        &self,
        req: Request<v1::PolicyText>,
    ) -> Result<Response<v1::PolicyCheckResponse>, Status> {
        self.admin(&req)?;
        policy::check(&self.s, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn policy_apply(
        &self,
        req: Request<v1::PolicyText>,
    ) -> Result<Response<v1::PolicyApplyResponse>, Status> {
        let actor = self.admin(&req)?;
        policy::apply(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn policy_show(
        &self,
        req: Request<v1::PolicyShowRequest>,
    ) -> Result<Response<v1::PolicyShowResponse>, Status> {
        self.admin(&req)?;
        policy::show(&self.s, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn policy_explain(
        &self,
        req: Request<v1::PolicyExplainRequest>,
    ) -> Result<Response<v1::PolicyExplainResponse>, Status> {
        self.admin(&req)?;
        policy::explain(&self.s, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_approvals(
        &self,
        req: Request<v1::ListApprovalsRequest>,
    ) -> Result<Response<v1::ListApprovalsResponse>, Status> {
        self.admin(&req)?;
        approvals::list(&self.s, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn approve(
        &self,
        req: Request<v1::ApproveRequest>,
    ) -> Result<Response<v1::ApprovalInfo>, Status> {
        let approver = self.admin(&req)?;
        approvals::approve(&self.s, approver, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn deny_approval(
        &self,
        req: Request<v1::DenyApprovalRequest>,
    ) -> Result<Response<v1::ApprovalInfo>, Status> {
        let approver = self.admin(&req)?;
        approvals::deny(&self.s, approver, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_owners(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListOwnersResponse>, Status> {
        self.admin(&req)?;
        owners::list(&self.s).await.map(Response::new)
    }

    async fn offboard_owner(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::OffboardResponse>, Status> {
        let actor = self.admin(&req)?;
        owners::offboard(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn stale_report(
        &self,
        req: Request<v1::StaleReportRequest>,
    ) -> Result<Response<v1::StaleReportResponse>, Status> {
        self.admin(&req)?;
        reports::stale(&self.s, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn jwks(&self, req: Request<v1::Empty>) -> Result<Response<v1::JwksResponse>, Status> {
        self.admin(&req)?;
        reports::jwks(&self.s).await.map(Response::new)
    }

    async fn rotate_master_key(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::RotateMasterKeyResponse>, Status> {
        let actor = self.admin(&req)?;
        keys::rotate_master(&self.s, actor).await.map(Response::new)
    }

    type AuditTailStream = EventStream;

    async fn audit_tail(
        &self,
        req: Request<v1::AuditTailRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.admin(&req)?;
        reports::audit_tail(&self.s, req.into_inner())
            .await
            .map(Response::new)
    }
    async fn put_secret(
        &self,
        req: Request<v1::PutSecretRequest>,
    ) -> Result<Response<v1::SecretInfo>, Status> {
        let actor = self.admin(&req)?;
        secrets::put(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn rotate_secret(
        &self,
        req: Request<v1::RotateSecretRequest>,
    ) -> Result<Response<v1::RotateSecretResponse>, Status> {
        let actor = self.admin(&req)?;
        secrets::rotate(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_secret_versions(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::SecretVersionsResponse>, Status> {
        self.admin(&req)?;
        secrets::versions(&self.s, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_secret(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::SecretDetail>, Status> {
        self.admin(&req)?;
        secrets::get(&self.s, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn set_secret_disabled(
        &self,
        req: Request<v1::SetDisabledRequest>,
    ) -> Result<Response<v1::SecretInfo>, Status> {
        let actor = self.admin(&req)?;
        secrets::set_disabled(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_secret(
        &self,
        req: Request<v1::RemoveSecretRequest>,
    ) -> Result<Response<v1::RemoveSecretResponse>, Status> {
        let actor = self.admin(&req)?;
        secrets::remove(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_introspection_client(
        &self,
        req: Request<v1::CreateIntrospectionClientRequest>,
    ) -> Result<Response<v1::CreateIntrospectionClientResponse>, Status> {
        let actor = self.admin(&req)?;
        oidc::create(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn rotate_key(
        &self,
        req: Request<v1::RotateKeyRequest>,
    ) -> Result<Response<v1::KeyInfo>, Status> {
        let actor = self.admin(&req)?;
        keys::rotate_key(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_introspection_clients(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListIntrospectionClientsResponse>, Status> {
        self.admin(&req)?;
        oidc::list(&self.s).await.map(Response::new)
    }

    async fn remove_introspection_client(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let actor = self.admin(&req)?;
        oidc::remove(&self.s, actor, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn oidc_documents(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::OidcDocumentsResponse>, Status> {
        self.admin(&req)?;
        oidc::documents(&self.s).await.map(Response::new)
    }

    async fn list_keys(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListKeysResponse>, Status> {
        self.admin(&req)?;
        keys::list_keys(&self.s).await.map(Response::new)
    }

    type BackupStream = BackupStream;

    async fn backup(
        &self,
        req: Request<v1::BackupRequest>,
    ) -> Result<Response<BackupStream>, Status> {
        let actor = self.admin(&req)?;
        backup::backup(&self.s, &actor).await.map(Response::new)
    }
}
