//! Mutual TLS on the gRPC port, through the real binary: a verified client certificate bound
//! to a principal authenticates it without any key, what is not bound (or not presented)
//! is refused and audited, API keys keep working over TLS, the port speaks nothing but TLS,
//! and a rewritten certificate is served without a restart.
//!
//! Certificates are made afresh by rcgen in a temporary directory for each test; the client is
//! a rustls client of our own under the reflection-driven [`Client`], so each test decides
//! exactly what it trusts and which certificate it presents.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{AlertDescription, ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use tokio::{io::AsyncReadExt, net::TcpStream};
use tonic::{
    Code,
    transport::{Channel, Endpoint},
};

use crate::support::{
    ADMIN_KEY, CallOpts, Client, Server, setup_connection, token_answer, token_provider, token_url,
    wait_until,
};

/// Upper bound on one connection or call; a healthy one takes milliseconds.
const BOUND: Duration = Duration::from_secs(10);

/// The identity the `billing` principal is bound to: a URI SAN (SPIFFE ID) of its certificate.
const BILLING_ID: &str = "spiffe://tokenvend.test/billing";

// ---------------------------------------------------------------- certificates

pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) pem: String,
    der: CertificateDer<'static>,
}

pub(crate) struct Leaf {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

pub(crate) fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

impl Ca {
    pub(crate) fn issue(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost` / 127.0.0.1, named `cn`.
    fn server(&self, cn: &str) -> Leaf {
        self.issue(
            cn,
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress("127.0.0.1".parse().unwrap()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with subject CN `cn` and, if given, one URI SAN.
    pub(crate) fn client(&self, cn: &str, uri: Option<&str>) -> Leaf {
        let sans = uri
            .map(|u| SanType::URI(u.try_into().unwrap()))
            .into_iter()
            .collect();
        self.issue(cn, sans, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

// ---------------------------------------------------------------- the server's files

/// The server's certificate, key and client CA bundle, in a temporary directory.
struct TlsFiles {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
}

impl TlsFiles {
    fn new(server: &Leaf, client_ca: &Ca) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = Self {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: dir.path().join("client-ca.pem"),
            _dir: dir,
        };
        replace(&files.client_ca, &client_ca.pem);
        files.install(server);
        files
    }

    /// Puts a new certificate and key in place, each file replaced whole (rename), as
    /// issuers do; the two files still change one after the other.
    fn install(&self, server: &Leaf) {
        replace(&self.key, &server.key_pem);
        replace(&self.cert, &server.cert_pem);
    }

    /// TLS on, client certificates verified against the client CA but optional (API keys
    /// keep working), files checked every `reload`.
    fn env(&self, reload: &str) -> Vec<(&'static str, String)> {
        let path = |p: &Path| p.display().to_string();
        vec![
            ("TOKENVEND_TLS_CERT_FILE", path(&self.cert)),
            ("TOKENVEND_TLS_KEY_FILE", path(&self.key)),
            ("TOKENVEND_TLS_CLIENT_CA_FILE", path(&self.client_ca)),
            ("TOKENVEND_TLS_CLIENT_AUTH", "optional".into()),
            ("TOKENVEND_TLS_RELOAD_INTERVAL", reload.into()),
        ]
    }
}

fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The address of the server's (TLS) gRPC port.
fn grpc_addr(server: &Server) -> SocketAddr {
    server
        .grpc
        .strip_prefix("http://")
        .expect("the harness prints an http:// address")
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------- clients

/// A rustls client configuration trusting `trust` and presenting `identity`, if any.
fn client_config(trust: &[&Ca], identity: Option<&Leaf>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in trust {
        roots.add(ca.der.clone()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// A gRPC channel whose connections go through our rustls client.
async fn tls_channel(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Channel, String> {
    let endpoint = Endpoint::from_static("http://localhost");
    let connect = endpoint.connect_with_connector(tower::service_fn(move |_: http::Uri| {
        let config = config.clone();
        async move {
            let tls = tls_connect(addr, config).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    }));
    tokio::time::timeout(BOUND, connect)
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e:?}"))
}

/// The reflection client over a new TLS connection (`key`: its Bearer key, if any). Fails
/// if the handshake or the reflection calls after it fail.
async fn tls_client(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    key: Option<&str>,
) -> Result<Client, String> {
    let channel = tls_channel(addr, config).await?;
    tokio::time::timeout(BOUND, Client::connect_with(channel, key))
        .await
        .map_err(|_| "reflection timed out".to_owned())?
        .map_err(|e| format!("reflection: {e:#}"))
}

#[derive(Debug, PartialEq)]
enum Verdict {
    /// The server spoke HTTP/2 (its SETTINGS frame) over the session.
    Accepted,
    Alert(AlertDescription),
    Other(String),
}

/// How the server judged a client's certificate. In TLS 1.3 the client completes its side of
/// the handshake before the server has checked the client's certificate, so the verdict (an
/// alert, or the server's first HTTP/2 frame) arrives with the first read.
async fn verdict(addr: SocketAddr, config: Arc<ClientConfig>) -> Verdict {
    let mut tls = match tls_connect(addr, config).await {
        Ok(tls) => tls,
        Err(e) => return classify(e),
    };
    let mut buf = [0u8; 16];
    match tokio::time::timeout(BOUND, tls.read(&mut buf))
        .await
        .expect("the server neither answered nor refused")
    {
        Ok(0) => Verdict::Other("closed without an alert".into()),
        Ok(_) => Verdict::Accepted,
        Err(e) => classify(e),
    }
}

fn classify(e: std::io::Error) -> Verdict {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(alert)) => Verdict::Alert(*alert),
        _ => Verdict::Other(e.to_string()),
    }
}

// ---------------------------------------------------------------- callers and the audit log

async fn create_principal(admin: &Client, name: &str, certificate_identity: &str) {
    admin
        .call(
            "AdminService/CreatePrincipal",
            json!({"principal": name, "role": "ROLE_CALLER",
                   "description": format!("the {name} service"),
                   "certificate_identity": certificate_identity}),
        )
        .await
        .expect("CreatePrincipal");
}

async fn grant(admin: &Client, principal: &str, tenant: &str, provider: &str) {
    admin
        .call(
            "AdminService/GrantPermission",
            json!({"principal": principal, "tenant": tenant, "provider": provider}),
        )
        .await
        .expect("GrantPermission");
}

async fn new_key(admin: &Client, principal: &str) -> String {
    admin
        .call("AdminService/CreateApiKey", json!({"principal": principal}))
        .await
        .expect("CreateApiKey")["api_key"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn audit(admin: &Client) -> Vec<Value> {
    admin
        .call("AdminService/ListAuditEvents", json!({"page_size": 1000}))
        .await
        .unwrap()["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn with_key(key: &str) -> CallOpts {
    CallOpts {
        key: Some(key.to_owned()),
        ..Default::default()
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_client_certificate_authenticates_without_a_key_and_anything_else_is_refused() {
    let provider = token_provider(token_answer("vended-token"), 1..).await;
    let server_ca = new_ca("tokenvend server CA");
    let client_ca = new_ca("tokenvend callers CA");
    let files = TlsFiles::new(&server_ca.server("tokenvend"), &client_ca);
    let server = Server::with_env(files.env("10s")).await;
    let addr = grpc_addr(&server);
    let no_cert = client_config(&[&server_ca], None);

    // The operator, with the bootstrap key over TLS, no certificate.
    let admin = tls_client(addr, no_cert.clone(), Some(ADMIN_KEY))
        .await
        .expect("the bootstrap key over TLS without a client certificate");
    for tenant in ["acme", "globex"] {
        setup_connection(
            &admin,
            tenant,
            "p",
            &token_url(&provider),
            "client-secret",
            json!({}),
        )
        .await;
    }
    create_principal(&admin, "billing", BILLING_ID).await;
    grant(&admin, "billing", "acme", "p").await;

    // A certificate naming the bound identity as a URI SAN (its CN is bound to nothing), and
    // no authorization header at all.
    let billing_cert = client_ca.client("billing-workload", Some(BILLING_ID));
    let billing = tls_client(
        addr,
        client_config(&[&server_ca], Some(&billing_cert)),
        None,
    )
    .await
    .expect("a client certificate signed by the client CA passes the handshake");
    wait_until(
        Duration::from_secs(5),
        "the certificate-bound principal gets its token",
        async || billing.get_token("acme", "p").await.is_ok(),
    )
    .await;
    assert_eq!(
        billing.get_token("acme", "p").await.unwrap()["access_token"],
        "vended-token"
    );
    // Bound to a caller, the certificate carries exactly the caller's permissions: another
    // tenant (existing or not) is refused, and so is AdminService.
    for tenant in ["globex", "initech"] {
        let err = billing.get_token(tenant, "p").await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{tenant}: {err:?}");
    }
    let err = billing
        .call("AdminService/ListTenants", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The subject CN is an identity too.
    create_principal(&admin, "reports", "reports.tokenvend.test").await;
    grant(&admin, "reports", "acme", "*").await;
    let reports = tls_client(
        addr,
        client_config(
            &[&server_ca],
            Some(&client_ca.client("reports.tokenvend.test", None)),
        ),
        None,
    )
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(5),
        "a certificate bound by its CN gets a token",
        async || reports.get_token("acme", "p").await.is_ok(),
    )
    .await;

    // Over TLS without a certificate and without a key: nobody.
    let anonymous = tls_client(addr, no_cert.clone(), None)
        .await
        .expect("optional client auth: the handshake passes without a certificate");
    let err = anonymous.get_token("acme", "p").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("missing"), "{}", err.message());

    // A certificate the client CA signed whose identities (CN, URI SAN) are bound to nobody.
    let stranger_cert = client_ca.client("stranger", Some("spiffe://tokenvend.test/stranger"));
    let stranger = tls_client(
        addr,
        client_config(&[&server_ca], Some(&stranger_cert)),
        None,
    )
    .await
    .expect("a verified but unbound certificate passes the handshake");
    let err = stranger.get_token("acme", "p").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("not bound"), "{}", err.message());

    // API keys work over TLS, with or without a certificate; when both are presented the
    // key decides. `analytics` may get globex/p, which the certificate's principal may not.
    create_principal(&admin, "analytics", "").await;
    grant(&admin, "analytics", "globex", "p").await;
    let analytics_key = new_key(&admin, "analytics").await;
    let analytics = tls_client(addr, no_cert.clone(), Some(&analytics_key))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "the new API key is known",
        async || analytics.get_token("globex", "p").await.is_ok(),
    )
    .await;
    let both = |method: &'static str, req: Value, key: &str| {
        let opts = with_key(key);
        let billing = billing.clone();
        async move { billing.call_opts(method, req, opts).await }
    };
    both(
        "TokenService/GetToken",
        json!({"tenant": "globex", "provider": "p"}),
        &analytics_key,
    )
    .await
    .expect("certificate + key: the key's principal (analytics) decides");
    let err = both(
        "TokenService/GetToken",
        json!({"tenant": "acme", "provider": "p"}),
        &analytics_key,
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "certificate + key: the certificate's grant does not add to the key's: {err:?}"
    );
    // A bad key next to a good certificate is not rescued by the certificate.
    let err = both(
        "TokenService/GetToken",
        json!({"tenant": "acme", "provider": "p"}),
        "tvk_nope_nope",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // The bootstrap key next to the caller's certificate: admin.
    both("AdminService/ListTenants", json!({}), ADMIN_KEY)
        .await
        .expect("certificate + bootstrap key: admin");

    // The audit log: the three unauthenticated calls (no credentials, unbound certificate,
    // bad key beside a certificate) and the certificate-bound caller's refusals, each with
    // where it came from. The log is written behind the answers: poll.
    let mut events = Vec::new();
    wait_until(
        Duration::from_secs(5),
        "the refusals reach the audit log",
        async || {
            events = audit(&admin).await;
            events
                .iter()
                .filter(|e| e["outcome"] == "UNAUTHENTICATED" && e["action"] == "GetToken")
                .count()
                >= 3
                && events
                    .iter()
                    .filter(|e| e["outcome"] == "PERMISSION_DENIED" && e["principal"] == "billing")
                    .count()
                    >= 3
        },
    )
    .await;
    let refused: Vec<&Value> = events.iter().filter(|e| e["outcome"] != "OK").collect();
    for e in &refused {
        let peer = e["peer"].as_str().unwrap_or_default();
        assert!(
            peer.starts_with("127.0.0.1:"),
            "a refusal without its peer: {e}"
        );
    }
    let unauthenticated: Vec<&&Value> = refused
        .iter()
        .filter(|e| e["outcome"] == "UNAUTHENTICATED")
        .collect();
    assert_eq!(unauthenticated.len(), 3, "{unauthenticated:?}");
    assert!(
        unauthenticated
            .iter()
            .all(|e| e["principal"] == "" && e["action"] == "GetToken"),
        "{unauthenticated:?}"
    );
    let denied: Vec<(&str, &str, &str)> = refused
        .iter()
        .filter(|e| e["outcome"] == "PERMISSION_DENIED")
        .map(|e| {
            (
                e["principal"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["tenant"].as_str().unwrap(),
            )
        })
        .collect();
    for expected in [
        ("billing", "GetToken", "globex"),
        ("billing", "GetToken", "initech"),
        ("billing", "ListTenants", ""),
        ("analytics", "GetToken", "acme"),
    ] {
        assert!(denied.contains(&expected), "{expected:?} in {denied:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_port_refuses_plaintext_and_certificates_of_another_ca() {
    let server_ca = new_ca("tokenvend server CA");
    let client_ca = new_ca("tokenvend callers CA");
    let files = TlsFiles::new(&server_ca.server("tokenvend"), &client_ca);
    let server = Server::with_env(files.env("10s")).await;
    let addr = grpc_addr(&server);

    // Plaintext HTTP/2 to the TLS port: refused, not left hanging.
    let plaintext = tokio::time::timeout(BOUND, Client::connect(&server.grpc, Some(ADMIN_KEY)))
        .await
        .expect("a plaintext client must be refused, not left hanging");
    assert!(plaintext.is_err(), "a plaintext client got through");

    // A client certificate from a CA the server does not trust for clients (here: the CA
    // that signed the server's own certificate, and an unrelated one) fails the handshake.
    let rogue_ca = new_ca("some other CA");
    for (what, ca) in [
        ("an unrelated CA", &rogue_ca),
        ("the server's CA", &server_ca),
    ] {
        let leaf = ca.client("billing-workload", Some(BILLING_ID));
        assert_eq!(
            verdict(addr, client_config(&[&server_ca], Some(&leaf))).await,
            Verdict::Alert(AlertDescription::UnknownCA),
            "a client certificate from {what}"
        );
        let err = tls_client(
            addr,
            client_config(&[&server_ca], Some(&leaf)),
            Some(ADMIN_KEY),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("a client certificate from {what} got a client through"));
        assert!(!err.is_empty());
    }
    // The same probe with a certificate of the client CA is accepted: the alert above is
    // the verdict on the certificate, and so is the one below on the server's.
    let good = client_ca.client("billing-workload", Some(BILLING_ID));
    assert_eq!(
        verdict(addr, client_config(&[&server_ca], Some(&good))).await,
        Verdict::Accepted
    );
    // A client that does not trust the server's CA refuses the server.
    assert!(
        tls_client(addr, client_config(&[&rogue_ca], None), Some(ADMIN_KEY))
            .await
            .is_err()
    );
    // Refused handshakes take nothing down.
    let admin = tls_client(addr, client_config(&[&server_ca], None), Some(ADMIN_KEY))
        .await
        .unwrap();
    admin
        .call("AdminService/ListTenants", json!({}))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_certificate_is_served_to_new_connections_without_a_restart() {
    let ca1 = new_ca("server CA 1");
    let ca2 = new_ca("server CA 2");
    let client_ca = new_ca("tokenvend callers CA");
    let files = TlsFiles::new(&ca1.server("tokenvend-a"), &client_ca);
    let server = Server::with_env(files.env("1s")).await;
    let addr = grpc_addr(&server);
    let pid = server.proc.pid();

    let established = tls_client(addr, client_config(&[&ca1], None), Some(ADMIN_KEY))
        .await
        .expect("a client trusting CA 1");
    established
        .call("AdminService/ListTenants", json!({}))
        .await
        .unwrap();
    assert!(
        tls_client(addr, client_config(&[&ca2], None), Some(ADMIN_KEY))
            .await
            .is_err(),
        "CA 2 signed nothing yet"
    );

    files.install(&ca2.server("tokenvend-b"));
    wait_until(
        Duration::from_secs(20),
        "a new connection trusting only CA 2 succeeds",
        async || match tls_client(addr, client_config(&[&ca2], None), Some(ADMIN_KEY)).await {
            Ok(c) => c.call("AdminService/ListTenants", json!({})).await.is_ok(),
            Err(_) => false,
        },
    )
    .await;
    let err = tls_client(addr, client_config(&[&ca1], None), Some(ADMIN_KEY))
        .await
        .err()
        .expect("a new connection trusting only CA 1 must fail after the reload");
    assert!(err.contains("connect"), "fails at the handshake: {err}");
    // The connection made before the reload keeps its session.
    established
        .call("AdminService/ListTenants", json!({}))
        .await
        .expect("an established connection survives the reload");
    assert_eq!(server.proc.pid(), pid, "no restart");
    assert!(
        server.output().contains("TLS files reloaded"),
        "the reload is logged"
    );
}
