//! Mutual TLS for every role: servers require a client certificate from the federation CA,
//! clients verify the server's certificate against the same CA and its expected name.

use std::time::Duration;

use confide_core::Role;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use crate::pki::{Credentials, PeerIdentity, Revocations, read_identity};

/// Network-level errors.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Connecting or serving failed.
    #[error("{context}: {message}")]
    Transport {
        /// What was being done.
        context: String,
        /// The transport's message.
        message: String,
    },
}

/// Wraps a transport error with context.
pub fn transport_err(context: impl Into<String>, e: impl std::fmt::Display) -> NetError {
    NetError::Transport {
        context: context.into(),
        message: format!("{e:#}"),
    }
}

/// Installs ring as the process-wide rustls provider (idempotent).
pub fn init_crypto() {
    // A second installation attempt returns Err with the provider already in place: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TLS configuration of a server: its identity, and client certificates required from the
/// federation CA.
pub fn server_tls(creds: &Credentials) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(&creds.cert_pem, creds.key_pem()))
        .client_ca_root(Certificate::from_pem(&creds.ca_pem))
}

/// Connects to `endpoint` (host:port), verifying that the server's certificate is issued by the
/// federation CA for `server_name`, and presenting this party's certificate.
pub async fn connect(
    endpoint: &str,
    server_name: &str,
    creds: &Credentials,
) -> Result<Channel, NetError> {
    init_crypto();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&creds.ca_pem))
        .identity(Identity::from_pem(&creds.cert_pem, creds.key_pem()))
        .domain_name(server_name);
    let ctx = || format!("connecting to {server_name} at {endpoint}");
    Channel::from_shared(format!("https://{endpoint}"))
        .map_err(|e| transport_err(ctx(), e))?
        .tls_config(tls)
        .map_err(|e| transport_err(ctx(), e))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| transport_err(ctx(), e))
}

/// The authenticated identity of the caller of a request (the TLS layer has already verified
/// its certificate chain), checked against the federation's revocation list and the roles
/// allowed for the call.
pub fn peer<T>(
    request: &Request<T>,
    allowed: &[Role],
    revocations: &Revocations,
) -> Result<PeerIdentity, Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let id = read_identity(leaf.as_ref()).map_err(|e| Status::unauthenticated(e.to_string()))?;
    revocations
        .check(&id.id)
        .map_err(Status::permission_denied)?;
    if !allowed.contains(&id.role) {
        return Err(Status::permission_denied(format!(
            "`{}` has role {}, this call needs {}",
            id.name,
            id.role,
            allowed
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    Ok(id)
}
