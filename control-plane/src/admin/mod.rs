//! The admin API, on the local Unix socket and on the agent-facing TLS port.
//!
//! On the socket, callers are authorised by their peer uid (SO_PEERCRED, read by tonic
//! for each connection): configured admins with their role, or, when none are
//! configured, root and the control plane's own uid (role admin). On the TLS port they
//! are authorised by an admin certificate (see `admin_certs`). Each method then needs
//! the role `roles.rs` gives it. The admin's name is recorded as the actor of what they
//! do, with their role and how they connected (see `actor.rs`).
//!
//! This file authorises each call and hands it to the function of its area (one module
//! per command group); the areas decode, validate, act and answer.

use std::sync::Arc;

use leash_proto::reason::Reason;
use leash_proto::v1;
use leash_proto::v1::admin_server::Admin;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tonic::{Request, Response, Status};

use crate::actor::{self, Caller, Role, Via};
use crate::state::Shared;
use roles::Access;

mod admin_certs;
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
pub mod roles;
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

    /// The caller, if their role allows `method` (its name in admin.proto; see
    /// `roles.rs`), or a denial saying why.
    fn caller<T>(&self, req: &Request<T>, method: &str) -> Result<Caller, Status> {
        let caller = match req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() {
            Some(tls) => {
                let cert = tls
                    .peer_certs()
                    .and_then(|c| c.first().cloned())
                    .ok_or_else(|| {
                        Reason::Denied.status(
                            "the admin service over TLS needs an admin certificate; get one with \
                         `leashctl login --server URL --code CODE`",
                        )
                    })?;
                admin_certs::mtls_caller(&self.s, &cert)?
            }
            None => self.local(req)?,
        };
        match roles::access(method) {
            Some(Access::Role(need)) if caller.role.allows(need) => Ok(caller),
            Some(Access::Role(need)) => {
                tracing::warn!(admin = %caller.name, role = %caller.role, method, "admin call refused by role");
                let why = format!(
                    "{} has the role {}; {method} needs the role {need} (or higher)",
                    caller.name, caller.role
                );
                let at = self.s.clock.now_ms();
                self.s
                    .record(vec![crate::audit::admin_denied(at, &caller, method, &why)]);
                Err(Reason::Denied.status(why))
            }
            Some(Access::Code) | None => {
                Err(Reason::Denied.status(format!("{method} is not open to admins by role")))
            }
        }
    }

    /// The local admin calling over the Unix socket, by peer uid.
    fn local<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let uid = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .map(|c| c.uid())
            .ok_or_else(|| {
                Reason::Denied.status("cannot tell who is calling (no peer credentials)")
            })?;
        let admins = &self.s.config.admins;
        if let Some(a) = admins.get(&uid) {
            return Ok(Caller {
                name: a.name.clone(),
                role: a.role,
                via: Via::Socket,
            });
        }
        let own = nix::unistd::geteuid().as_raw();
        if admins.is_empty() && (uid == 0 || uid == own) {
            let name = nix::unistd::User::from_uid(uid.into())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| format!("uid:{uid}"));
            return Ok(Caller {
                name,
                role: Role::Admin,
                via: Via::Socket,
            });
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
        let c = self.caller(&req, "CreateJoinToken")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            join_tokens::create(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn list_join_tokens(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListJoinTokensResponse>, Status> {
        let c = self.caller(&req, "ListJoinTokens")?;
        actor::scope(c, async move {
            join_tokens::list(&self.s).await.map(Response::new)
        })
        .await
    }

    async fn revoke_join_token(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let c = self.caller(&req, "RevokeJoinToken")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            join_tokens::revoke(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn add_workload(
        &self,
        req: Request<v1::AddWorkloadRequest>,
    ) -> Result<Response<v1::Workload>, Status> {
        let c = self.caller(&req, "AddWorkload")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            workloads::add(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn list_workloads(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListWorkloadsResponse>, Status> {
        let c = self.caller(&req, "ListWorkloads")?;
        actor::scope(c, async move {
            workloads::list(&self.s).await.map(Response::new)
        })
        .await
    }

    async fn get_workload(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::Workload>, Status> {
        let c = self.caller(&req, "GetWorkload")?;
        actor::scope(c, async move {
            workloads::get(&self.s, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn remove_workload(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let c = self.caller(&req, "RemoveWorkload")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            workloads::remove(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn set_workload_disabled(
        &self,
        req: Request<v1::SetDisabledRequest>,
    ) -> Result<Response<v1::Workload>, Status> {
        let c = self.caller(&req, "SetWorkloadDisabled")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            workloads::set_disabled(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn transfer_workload(
        &self,
        req: Request<v1::TransferRequest>,
    ) -> Result<Response<v1::Workload>, Status> {
        let c = self.caller(&req, "TransferWorkload")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            workloads::transfer(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn add_credential(
        &self,
        req: Request<v1::Credential>,
    ) -> Result<Response<v1::Credential>, Status> {
        let c = self.caller(&req, "AddCredential")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            credentials::add(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn list_credentials(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListCredentialsResponse>, Status> {
        let c = self.caller(&req, "ListCredentials")?;
        actor::scope(c, async move {
            credentials::list(&self.s).await.map(Response::new)
        })
        .await
    }

    async fn get_credential(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::CredentialDetail>, Status> {
        let c = self.caller(&req, "GetCredential")?;
        actor::scope(c, async move {
            credentials::get(&self.s, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn remove_credential(
        &self,
        req: Request<v1::RemoveCredentialRequest>,
    ) -> Result<Response<v1::RemoveCredentialResponse>, Status> {
        let c = self.caller(&req, "RemoveCredential")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            credentials::remove(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn list_hosts(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListHostsResponse>, Status> {
        let c = self.caller(&req, "ListHosts")?;
        actor::scope(
            c,
            async move { hosts::list(&self.s).await.map(Response::new) },
        )
        .await
    }

    async fn evict_host(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let c = self.caller(&req, "EvictHost")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            hosts::evict(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn list_leases(
        &self,
        req: Request<v1::ListLeasesRequest>,
    ) -> Result<Response<v1::ListLeasesResponse>, Status> {
        let c = self.caller(&req, "ListLeases")?;
        actor::scope(c, async move {
            leases::list(&self.s, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn get_lease(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::LeaseDetail>, Status> {
        let c = self.caller(&req, "GetLease")?;
        actor::scope(c, async move {
            leases::get(&self.s, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn revoke(
        &self,
        req: Request<v1::RevokeRequest>,
    ) -> Result<Response<v1::RevokeResponse>, Status> {
        let c = self.caller(&req, "Revoke")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            leases::revoke(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    type WaitRevocationStream = ProgressStream;

    async fn wait_revocation(
        &self,
        req: Request<v1::WaitRevocationRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        let c = self.caller(&req, "WaitRevocation")?;
        actor::scope(c, async move {
            leases::wait_revocation(self.s.clone(), req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn introspect(
        &self,
        req: Request<v1::IntrospectRequest>,
    ) -> Result<Response<v1::IntrospectResponse>, Status> {
        let c = self.caller(&req, "Introspect")?;
        actor::scope(c, async move {
            leases::introspect(&self.s, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn policy_check(
        &self,
        req: Request<v1::PolicyText>,
    ) -> Result<Response<v1::PolicyCheckResponse>, Status> {
        let c = self.caller(&req, "PolicyCheck")?;
        actor::scope(c, async move {
            policy::check(&self.s, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn policy_apply(
        &self,
        req: Request<v1::PolicyText>,
    ) -> Result<Response<v1::PolicyApplyResponse>, Status> {
        let c = self.caller(&req, "PolicyApply")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            policy::apply(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn policy_show(
        &self,
        req: Request<v1::PolicyShowRequest>,
    ) -> Result<Response<v1::PolicyShowResponse>, Status> {
        let c = self.caller(&req, "PolicyShow")?;
        actor::scope(c, async move {
            policy::show(&self.s, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn policy_explain(
        &self,
        req: Request<v1::PolicyExplainRequest>,
    ) -> Result<Response<v1::PolicyExplainResponse>, Status> {
        let c = self.caller(&req, "PolicyExplain")?;
        actor::scope(c, async move {
            policy::explain(&self.s, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn list_approvals(
        &self,
        req: Request<v1::ListApprovalsRequest>,
    ) -> Result<Response<v1::ListApprovalsResponse>, Status> {
        let c = self.caller(&req, "ListApprovals")?;
        actor::scope(c, async move {
            approvals::list(&self.s, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn approve(
        &self,
        req: Request<v1::ApproveRequest>,
    ) -> Result<Response<v1::ApprovalInfo>, Status> {
        let c = self.caller(&req, "Approve")?;
        let approver = c.name.clone();
        actor::scope(c, async move {
            approvals::approve(&self.s, approver, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn deny_approval(
        &self,
        req: Request<v1::DenyApprovalRequest>,
    ) -> Result<Response<v1::ApprovalInfo>, Status> {
        let c = self.caller(&req, "DenyApproval")?;
        let approver = c.name.clone();
        actor::scope(c, async move {
            approvals::deny(&self.s, approver, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn list_owners(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListOwnersResponse>, Status> {
        let c = self.caller(&req, "ListOwners")?;
        actor::scope(
            c,
            async move { owners::list(&self.s).await.map(Response::new) },
        )
        .await
    }

    async fn offboard_owner(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::OffboardResponse>, Status> {
        let c = self.caller(&req, "OffboardOwner")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            owners::offboard(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn stale_report(
        &self,
        req: Request<v1::StaleReportRequest>,
    ) -> Result<Response<v1::StaleReportResponse>, Status> {
        let c = self.caller(&req, "StaleReport")?;
        actor::scope(c, async move {
            reports::stale(&self.s, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn jwks(&self, req: Request<v1::Empty>) -> Result<Response<v1::JwksResponse>, Status> {
        let c = self.caller(&req, "Jwks")?;
        actor::scope(
            c,
            async move { reports::jwks(&self.s).await.map(Response::new) },
        )
        .await
    }

    async fn rotate_master_key(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::RotateMasterKeyResponse>, Status> {
        let c = self.caller(&req, "RotateMasterKey")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            keys::rotate_master(&self.s, actor).await.map(Response::new)
        })
        .await
    }

    type AuditTailStream = EventStream;

    async fn audit_tail(
        &self,
        req: Request<v1::AuditTailRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let c = self.caller(&req, "AuditTail")?;
        actor::scope(c, async move {
            reports::audit_tail(&self.s, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }
    async fn put_secret(
        &self,
        req: Request<v1::PutSecretRequest>,
    ) -> Result<Response<v1::SecretInfo>, Status> {
        let c = self.caller(&req, "PutSecret")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            secrets::put(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn rotate_secret(
        &self,
        req: Request<v1::RotateSecretRequest>,
    ) -> Result<Response<v1::RotateSecretResponse>, Status> {
        let c = self.caller(&req, "RotateSecret")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            secrets::rotate(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn list_secret_versions(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::SecretVersionsResponse>, Status> {
        let c = self.caller(&req, "ListSecretVersions")?;
        actor::scope(c, async move {
            secrets::versions(&self.s, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn get_secret(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::SecretDetail>, Status> {
        let c = self.caller(&req, "GetSecret")?;
        actor::scope(c, async move {
            secrets::get(&self.s, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn set_secret_disabled(
        &self,
        req: Request<v1::SetDisabledRequest>,
    ) -> Result<Response<v1::SecretInfo>, Status> {
        let c = self.caller(&req, "SetSecretDisabled")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            secrets::set_disabled(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn remove_secret(
        &self,
        req: Request<v1::RemoveSecretRequest>,
    ) -> Result<Response<v1::RemoveSecretResponse>, Status> {
        let c = self.caller(&req, "RemoveSecret")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            secrets::remove(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn create_introspection_client(
        &self,
        req: Request<v1::CreateIntrospectionClientRequest>,
    ) -> Result<Response<v1::CreateIntrospectionClientResponse>, Status> {
        let c = self.caller(&req, "CreateIntrospectionClient")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            oidc::create(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn rotate_key(
        &self,
        req: Request<v1::RotateKeyRequest>,
    ) -> Result<Response<v1::KeyInfo>, Status> {
        let c = self.caller(&req, "RotateKey")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            keys::rotate_key(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn list_introspection_clients(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListIntrospectionClientsResponse>, Status> {
        let c = self.caller(&req, "ListIntrospectionClients")?;
        actor::scope(
            c,
            async move { oidc::list(&self.s).await.map(Response::new) },
        )
        .await
    }

    async fn remove_introspection_client(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let c = self.caller(&req, "RemoveIntrospectionClient")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            oidc::remove(&self.s, actor, req.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn oidc_documents(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::OidcDocumentsResponse>, Status> {
        let c = self.caller(&req, "OidcDocuments")?;
        actor::scope(c, async move {
            oidc::documents(&self.s).await.map(Response::new)
        })
        .await
    }

    async fn list_keys(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListKeysResponse>, Status> {
        let c = self.caller(&req, "ListKeys")?;
        actor::scope(c, async move {
            keys::list_keys(&self.s).await.map(Response::new)
        })
        .await
    }

    async fn issue_admin_cert(
        &self,
        req: Request<v1::IssueAdminCertRequest>,
    ) -> Result<Response<v1::IssueAdminCertResponse>, Status> {
        let c = self.caller(&req, "IssueAdminCert")?;
        let actor = c.name.clone();
        let f = admin_certs::issue(&self.s, actor, req.into_inner());
        actor::scope(c, f).await.map(Response::new)
    }

    async fn revoke_admin_cert(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::AdminCertInfo>, Status> {
        let c = self.caller(&req, "RevokeAdminCert")?;
        let actor = c.name.clone();
        let f = admin_certs::revoke(&self.s, actor, req.into_inner());
        actor::scope(c, f).await.map(Response::new)
    }

    async fn list_admin_certs(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListAdminCertsResponse>, Status> {
        self.caller(&req, "ListAdminCerts")?;
        admin_certs::list(&self.s).map(Response::new)
    }

    async fn admin_login(
        &self,
        req: Request<v1::AdminLoginRequest>,
    ) -> Result<Response<v1::AdminLoginResponse>, Status> {
        // The one call taken without an admin identity: the code is the credential. It
        // is served on the TLS port only, where the caller pinned our CA by the code.
        let Some(tls) = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() else {
            return Err(Reason::Invalid.status(
                "log in over the control plane's TLS port: leashctl login --server https://HOST:PORT",
            ));
        };
        let source = tls.get_ref().remote_addr().map(|a| a.ip());
        admin_certs::login(&self.s, source, req.into_inner())
            .await
            .map(Response::new)
    }

    type BackupStream = BackupStream;

    async fn backup(
        &self,
        req: Request<v1::BackupRequest>,
    ) -> Result<Response<BackupStream>, Status> {
        let c = self.caller(&req, "Backup")?;
        let actor = c.name.clone();
        actor::scope(c, async move {
            backup::backup(&self.s, &actor).await.map(Response::new)
        })
        .await
    }
}
