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

/// A failed connection attempt, and whether asking again may succeed.
#[derive(Debug)]
pub struct ConnectFailure {
    /// The peer could not be reached (refused, reset, timed out, unreachable), as opposed to a
    /// problem that asking again cannot fix (a certificate, a name, an address).
    pub transient: bool,
    /// What went wrong, with the transport's whole chain of causes.
    pub error: NetError,
}

/// An error and its causes, joined (tonic's own message is only "transport error").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

/// Whether a connection error is about reaching the peer rather than about who it is: an I/O
/// error of the connection itself, or the connect timeout. TLS failures (rustls reports them
/// as invalid data), a bad address and anything else are not.
fn transient(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::*;
    let mut cur = Some(e);
    while let Some(err) = cur {
        // The connect timeout (tower's `Elapsed`, or an I/O error saying so).
        if err.to_string().contains("timed out") {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | TimedOut
                    | NotConnected
                    | AddrNotAvailable
                    | HostUnreachable
                    | NetworkUnreachable
            );
        }
        cur = err.source();
    }
    false
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
    connect_classified(endpoint, server_name, creds)
        .await
        .map_err(|f| f.error)
}

/// [`connect`], saying whether the failure was one of reaching the peer (worth asking again).
pub async fn connect_classified(
    endpoint: &str,
    server_name: &str,
    creds: &Credentials,
) -> Result<Channel, ConnectFailure> {
    init_crypto();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&creds.ca_pem))
        .identity(Identity::from_pem(&creds.cert_pem, creds.key_pem()))
        .domain_name(server_name);
    let ctx = || format!("connecting to {server_name} at {endpoint}");
    let permanent = |e: tonic::transport::Error| ConnectFailure {
        transient: false,
        error: transport_err(ctx(), error_chain(&e)),
    };
    Channel::from_shared(format!("https://{endpoint}"))
        .map_err(|e| ConnectFailure {
            transient: false,
            error: transport_err(ctx(), e),
        })?
        .tls_config(tls)
        .map_err(permanent)?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| ConnectFailure {
            transient: transient(&e),
            error: transport_err(ctx(), error_chain(&e)),
        })
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

#[cfg(test)]
mod classify_tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// NODE-003 asks again only when the peer could not be reached: a refused or timed-out
    /// connection, not a certificate the client refused (rustls: invalid data).
    #[test]
    fn only_failures_to_reach_the_peer_are_transient() {
        use std::io::{Error, ErrorKind};
        let refused = Wrapped(Error::from(ErrorKind::ConnectionRefused));
        assert!(transient(&refused));
        let tls = Wrapped(Error::new(
            ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        ));
        assert!(!transient(&tls));
        assert_eq!(
            error_chain(&tls),
            "transport error: invalid peer certificate: UnknownIssuer"
        );
        let timeout = Wrapped(Error::other("request timed out"));
        assert!(transient(&timeout));
    }
}
