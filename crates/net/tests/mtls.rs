//! Mutual TLS: either side refuses a peer without a valid certificate from the federation CA,
//! and servers refuse callers whose certificate has the wrong role.

mod common;

use std::time::Duration;

use confide_net::coordinator::{Coordinator, CoordinatorOptions, CoordinatorService};
use confide_net::pb;
use confide_net::pki::Credentials;
use confide_net::transport::{connect, init_crypto, server_tls};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Server};

async fn start_coordinator(fed: &std::path::Path) -> String {
    init_crypto();
    let creds = Credentials::load(fed, "coordinator").expect("creds");
    let spec = common::breast_homo_spec(&[("scheme = \"paillier\"", "scheme = \"plain\"")]);
    let coordinator = Coordinator::new(CoordinatorOptions {
        manifest: common::manifest(fed, &spec),
        identity: creds.identity(),
        certificate: creds.cert_der().expect("der"),
        audit: confide_net::roles::open_audit_log(None).expect("audit"),
        audit_export: None,
        revocations: creds.revocations.clone(),
        spec,
        eval: None,
        keyholder_endpoint: None,
        aggregator_endpoints: Vec::new(),
        checkpoints: None,
        resume: None,
    })
    .expect("new");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = Server::builder()
        .tls_config(server_tls(&creds))
        .expect("tls")
        .add_service(pb::coordinator_server::CoordinatorServer::new(
            CoordinatorService(coordinator),
        ))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    addr
}

async fn join(channel: Channel) -> Result<pb::JoinReply, tonic::Status> {
    pb::coordinator_client::CoordinatorClient::new(channel)
        .join(pb::JoinRequest {})
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_accepts_a_federation_node_and_refuses_everyone_else() {
    let dir = tempfile::tempdir().expect("tmp");
    let fed = dir.path().join("fed");
    common::federation(&fed, &["guest"]);
    let addr = start_coordinator(&fed).await;

    // A node with a certificate from the federation CA is served.
    let guest = Credentials::load(&fed, "guest").expect("creds");
    let reply = join(
        connect(&addr, "coordinator", &guest)
            .await
            .expect("connect"),
    )
    .await
    .expect("joined");
    assert!(reply.job_spec.contains("breast-homo"));

    // A client without a certificate is refused (at the handshake or on its first call).
    let ca = std::fs::read_to_string(fed.join("ca.crt")).expect("ca");
    let anonymous = async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca))
            .domain_name("coordinator");
        let ch = Channel::from_shared(format!("https://{addr}"))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        join(ch).await
    };
    assert!(
        anonymous.await.is_err(),
        "a client without a certificate must be refused"
    );

    // A client whose certificate comes from another CA is refused.
    let other = dir.path().join("other");
    common::federation(&other, &["guest"]);
    let mut foreign = Credentials::load(&other, "guest").expect("creds");
    foreign.ca_pem = ca.clone(); // it trusts our CA, but its own certificate is foreign
    let refused = match connect(&addr, "coordinator", &foreign).await {
        Ok(ch) => join(ch).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a certificate from another CA must be refused");

    // A client refuses a server whose certificate is not from its federation.
    let foreign_server = start_coordinator(&other).await;
    assert!(
        match connect(&foreign_server, "coordinator", &guest).await {
            Ok(ch) => join(ch).await.is_err(),
            Err(_) => true,
        },
        "a node must refuse a server outside its federation"
    );

    // A valid certificate with the wrong role is refused by the role check.
    let owner = Credentials::load(&fed, "owner").expect("creds");
    let err = join(
        connect(&addr, "coordinator", &owner)
            .await
            .expect("connect"),
    )
    .await
    .expect_err("role");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_revoked_by_the_ca_is_refused_on_its_next_call() {
    let dir = tempfile::tempdir().expect("tmp");
    let fed = dir.path().join("fed");
    common::federation(&fed, &["guest", "host"]);
    let addr = start_coordinator(&fed).await;
    let guest = Credentials::load(&fed, "guest").expect("creds");
    let channel = connect(&addr, "coordinator", &guest)
        .await
        .expect("connect");
    join(channel.clone())
        .await
        .expect("joined before the revocation");

    confide_net::pki::revoke(&fed, "guest", "key lost", time::OffsetDateTime::now_utc())
        .expect("revoke");
    let refused = join(channel).await.expect_err("revoked");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("key lost"),
        "{}",
        refused.message()
    );
    // Loading the revoked identity fails too; another party is unaffected.
    assert!(Credentials::load(&fed, "guest").is_err());
    let host = Credentials::load(&fed, "host").expect("creds");
    join(connect(&addr, "coordinator", &host).await.expect("connect"))
        .await
        .expect("host still served");

    // A forged revocation list (not signed by the CA) makes the coordinator refuse everyone.
    let path = fed.join(confide_net::pki::REVOCATIONS);
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, text.replace("key lost", "key found")).expect("write");
    let host = Credentials::load(&fed, "host");
    assert!(host.is_err(), "a forged list is not trusted");
}
