//! Optional TLS, and mutual TLS, on the gRPC port.
//!
//! The files are watched rather than read once because the usual issuers (cert-manager, a
//! Vault agent, an ACME client) rewrite them in place well before expiry, and a restart to
//! pick them up would cost a drain. Everything a handshake depends on (certificate, key,
//! client CA, client-auth mode) lives in one `rustls::ServerConfig` that is replaced whole,
//! so no handshake can pair a new certificate with an old CA or the reverse, and connections
//! already open keep the session they negotiated.
//!
//! A client certificate is only ever an *identity*: [`peer_identities`] says what the verified
//! leaf names, and what that identity may do is the auth layer's decision. In `optional` mode
//! a client without a certificate passes the handshake, so API keys keep working beside it.
//!
//! Error messages and `Debug` output name settings and files, never their contents: one of
//! them is a private key.

use std::{
    fmt, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError, RwLock},
    task::{Context, Poll, ready},
    time::Duration,
};

use rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sha2::{Digest, Sha256};
use tokio::{
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
    time::{MissedTickBehavior, Sleep},
};
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName};
use zeroize::Zeroizing;

const CERT_ENV: &str = "TOKENVEND_TLS_CERT_FILE";
const KEY_ENV: &str = "TOKENVEND_TLS_KEY_FILE";
const CLIENT_CA_ENV: &str = "TOKENVEND_TLS_CLIENT_CA_FILE";
const CLIENT_AUTH_ENV: &str = "TOKENVEND_TLS_CLIENT_AUTH";

/// Long enough for a distant client on a lossy link; short enough that a client that connects
/// and then says nothing (or a port scanner) gives its socket back.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds the memory a connection flood can pin; connections beyond it wait in the kernel's
/// accept backlog until handshakes finish.
const MAX_HANDSHAKES_IN_FLIGHT: usize = 1024;

/// An accept error that is not one connection's fault (typically out of file descriptors)
/// would repeat at once: retrying without a pause would spin a core and flood the log.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Whether a client must present a certificate. Only meaningful with a client CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ClientAuth {
    /// A client may present a certificate (it is then verified) or none, and authenticate
    /// with an API key instead.
    #[default]
    Optional,
    /// The handshake fails without a certificate signed by the client CA.
    Required,
}

/// TLS settings of the gRPC port (flattened into `serve`). Without a certificate and key the
/// port stays plaintext, as it was before TLS existed, e.g. behind a TLS-terminating mesh.
#[derive(clap::Args, Clone, Debug)]
pub struct TlsArgs {
    /// Server certificate chain (PEM, leaf first). With TOKENVEND_TLS_KEY_FILE, turns TLS on.
    #[arg(long = "tls-cert-file", env = "TOKENVEND_TLS_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Private key of the server certificate (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long = "tls-key-file", env = "TOKENVEND_TLS_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates are verified against. Unset: clients are not
    /// asked for a certificate.
    #[arg(long = "tls-client-ca-file", env = "TOKENVEND_TLS_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,
    /// optional: a client may present a certificate or use an API key; required: the handshake
    /// fails without a client certificate.
    #[arg(
        long = "tls-client-auth",
        env = "TOKENVEND_TLS_CLIENT_AUTH",
        value_enum,
        default_value = "optional"
    )]
    pub client_auth: ClientAuth,
    /// How often the certificate, key and CA files are checked for new contents (0 disables it).
    #[arg(
        long = "tls-reload-interval",
        env = "TOKENVEND_TLS_RELOAD_INTERVAL",
        default_value = "10s",
        value_parser = crate::config::parse_duration
    )]
    pub reload_interval: Duration,
}

impl TlsArgs {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }

    /// Refuses half-configured TLS at start-up: serving plaintext because one variable was
    /// misspelt, or accepting every client when `required` was meant, would go unnoticed.
    pub fn validate(&self) -> anyhow::Result<()> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => anyhow::bail!(
                "{CERT_ENV} is set but {KEY_ENV} is not: TLS needs the certificate and its private key"
            ),
            (None, Some(_)) => anyhow::bail!(
                "{KEY_ENV} is set but {CERT_ENV} is not: TLS needs the certificate and its private key"
            ),
            _ => {}
        }
        if !self.enabled() {
            if self.client_ca_file.is_some() {
                anyhow::bail!(
                    "{CLIENT_CA_ENV} is set but TLS is off: client certificates need {CERT_ENV} and {KEY_ENV}"
                );
            }
            if self.client_auth == ClientAuth::Required {
                anyhow::bail!(
                    "{CLIENT_AUTH_ENV}=required but TLS is off: set {CERT_ENV}, {KEY_ENV} and {CLIENT_CA_ENV}"
                );
            }
        }
        if self.client_auth == ClientAuth::Required && self.client_ca_file.is_none() {
            anyhow::bail!(
                "{CLIENT_AUTH_ENV}=required needs {CLIENT_CA_ENV}, the CA bundle client certificates are verified against"
            );
        }
        Ok(())
    }
}

/// Why a TLS file cannot be used: the setting, the file and a class of problem. Never any
/// of the file's contents, since one of the files holds a private key.
#[derive(Debug, thiserror::Error)]
#[error("{setting} ({}): {problem}", .path.display())]
pub struct TlsFileError {
    pub setting: &'static str,
    pub path: PathBuf,
    pub problem: String,
}

impl TlsFileError {
    fn new(setting: &'static str, path: &Path, problem: impl Into<String>) -> Self {
        Self {
            setting,
            path: path.to_owned(),
            problem: problem.into(),
        }
    }
}

/// Accepts TLS connections on the gRPC port with the current certificate, and keeps that
/// certificate current. Clones share one configuration, so a reload reaches every clone.
#[derive(Clone)]
pub struct TlsAcceptor {
    shared: Arc<Shared>,
    handshake_timeout: Duration,
}

struct Shared {
    files: Files,
    reload_interval: Duration,
    /// Read once per accepted connection; replaced whole on reload.
    config: RwLock<Arc<ServerConfig>>,
    /// The file contents last tried, good or bad: a file that stays broken is reported once,
    /// not at every tick. Also serialises reloads.
    tried: Mutex<Fingerprint>,
}

#[derive(Debug, Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    client_auth: ClientAuth,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // File names only: the live configuration holds the private key.
        let files = &self.shared.files;
        f.debug_struct("TlsAcceptor")
            .field("cert_file", &files.cert)
            .field("key_file", &files.key)
            .field("client_ca_file", &files.client_ca)
            .field("client_auth", &files.client_auth)
            .field("reload_interval", &self.shared.reload_interval)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Reads and checks every file now, so a bad certificate stops start-up instead of
    /// failing each handshake later.
    pub fn load(args: &TlsArgs) -> anyhow::Result<Self> {
        args.validate()?;
        let (Some(cert), Some(key)) = (&args.cert_file, &args.key_file) else {
            anyhow::bail!("TLS is off: set {CERT_ENV} and {KEY_ENV}");
        };
        let files = Files {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.client_ca_file.clone(),
            client_auth: args.client_auth,
        };
        let contents = Contents::read(&files);
        let built = build(&files, &contents)?;
        tracing::info!(
            cert_file = %files.cert.display(),
            subject = %built.subject,
            not_after = %built.not_after,
            client_ca_file = ?files.client_ca,
            client_auth = ?files.client_auth,
            "TLS on for the gRPC port"
        );
        Ok(Self {
            shared: Arc::new(Shared {
                reload_interval: args.reload_interval,
                config: RwLock::new(built.config),
                tried: Mutex::new(contents.fingerprint()),
                files,
            }),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    /// For tests and unusual networks; the default is [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(
            &self
                .shared
                .config
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// One check of the files, as the background task does at each tick. `Ok(true)`: their
    /// contents changed and the new configuration now serves new handshakes. `Ok(false)`:
    /// nothing new since the last check (including contents that already failed once). `Err`:
    /// they changed but cannot be used, and the previous configuration keeps serving.
    /// Logs one INFO or WARN line when something changed. Blocking (file reads).
    pub fn reload_now(&self) -> Result<bool, TlsFileError> {
        let files = &self.shared.files;
        let mut tried = self
            .shared
            .tried
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let contents = Contents::read(files);
        let fingerprint = contents.fingerprint();
        if fingerprint == *tried {
            return Ok(false);
        }
        *tried = fingerprint;
        match build(files, &contents) {
            Ok(built) => {
                *self
                    .shared
                    .config
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = built.config;
                tracing::info!(
                    cert_file = %files.cert.display(),
                    subject = %built.subject,
                    not_after = %built.not_after,
                    client_ca_file = ?files.client_ca,
                    "TLS files reloaded: new connections use them"
                );
                Ok(true)
            }
            Err(error) => {
                tracing::warn!(
                    setting = error.setting,
                    file = %error.path.display(),
                    problem = %error.problem,
                    "TLS files changed but cannot be used: still serving the previous certificate"
                );
                Err(error)
            }
        }
    }

    /// Checks the files every reload interval until `cancel` fires (see [`Self::reload_now`]).
    /// With a zero interval it only waits for `cancel`, so callers need no special case.
    pub fn spawn_reloader(&self, cancel: CancellationToken) -> JoinHandle<()> {
        let acceptor = self.clone();
        let period = self.shared.reload_interval;
        tokio::spawn(async move {
            if period.is_zero() {
                cancel.cancelled().await;
                return;
            }
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let acceptor = acceptor.clone();
                // File reads block: keep them off the workers that serve requests.
                let check = tokio::task::spawn_blocking(move || acceptor.reload_now());
                tokio::select! {
                    () = cancel.cancelled() => return,
                    joined = check => {
                        // The outcome is already logged by reload_now.
                        if let Err(error) = joined {
                            tracing::warn!(%error, "TLS file check did not complete");
                        }
                    }
                }
            }
        })
    }

    /// TLS connections for `tonic::transport::Server::serve_with_incoming(_shutdown)`.
    ///
    /// Handshakes run as their own tasks, so a slow or silent client never holds up the next
    /// accept, and each is bounded by the handshake timeout. A failed handshake is logged at
    /// DEBUG (a port scanner must not fill the log) and skipped: the stream only yields
    /// established connections and never ends by itself; dropping it closes the listener and
    /// abandons handshakes in progress.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> + Send + 'static {
        TlsIncoming {
            listener,
            acceptor: self.clone(),
            handshakes: JoinSet::new(),
            paused: None,
        }
    }
}

struct TlsIncoming {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<TlsStream<TcpStream>>>,
    paused: Option<Pin<Box<Sleep>>>,
}

impl TlsIncoming {
    fn start_handshake(&mut self, tcp: TcpStream, peer: SocketAddr) {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.acceptor.current());
        let limit = self.acceptor.handshake_timeout;
        self.handshakes.spawn(async move {
            // As tonic's own listener does: gRPC's small frames must not wait on Nagle.
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
            }
            match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, timeout = ?limit, "TLS handshake timed out");
                    None
                }
            }
        });
    }
}

impl Stream for TlsIncoming {
    type Item = io::Result<TlsStream<TcpStream>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(stream)))) => return Poll::Ready(Some(Ok(stream))),
                // Already logged in the task.
                Poll::Ready(Some(Ok(None))) => continue,
                Poll::Ready(Some(Err(error))) => {
                    tracing::warn!(%error, "a TLS handshake task failed");
                    continue;
                }
                Poll::Ready(None) | Poll::Pending => {}
            }
            if let Some(pause) = &mut this.paused {
                ready!(pause.as_mut().poll(cx));
                this.paused = None;
            }
            if this.handshakes.len() >= MAX_HANDSHAKES_IN_FLIGHT {
                // poll_join_next above registered the wake-up for when one finishes.
                return Poll::Pending;
            }
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((tcp, peer))) => this.start_handshake(tcp, peer),
                Poll::Ready(Err(error)) if is_one_connections_fault(&error) => {
                    tracing::debug!(%error, "an incoming connection failed before TLS");
                }
                Poll::Ready(Err(error)) => {
                    tracing::warn!(
                        %error,
                        pause = ?ACCEPT_ERROR_PAUSE,
                        "accepting on the gRPC port failed; pausing accepts"
                    );
                    this.paused = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_PAUSE)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn is_one_connections_fault(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

/// The identities of the client certificate on this request: the leaf's subject CN(s), then
/// its DNS, URI and e-mail SANs, in certificate order without repeats. Empty without TLS,
/// without a client certificate, or if the leaf cannot be parsed (so it fails closed).
///
/// Only *verified* certificates reach request extensions: [`TlsAcceptor`] only asks for one
/// with a client CA, and the handshake fails unless the chain leads to it. Any certificate
/// that CA issued can claim any name, so it must be a CA dedicated to this service's callers.
pub fn peer_identities<B>(req: &http::Request<B>) -> Vec<String> {
    identities_of(req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>())
}

/// [`peer_identities`] for code that sees a `tonic::Request` (an interceptor).
pub fn request_peer_identities<T>(req: &tonic::Request<T>) -> Vec<String> {
    identities_of(req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>())
}

fn identities_of(info: Option<&TlsConnectInfo<TcpConnectInfo>>) -> Vec<String> {
    let Some(certs) = info.and_then(TlsConnectInfo::peer_certs) else {
        return Vec::new();
    };
    certs
        .first()
        .map(|leaf| certificate_identities(leaf))
        .unwrap_or_default()
}

/// The identities one certificate names (see [`peer_identities`]). Parses without verifying.
pub fn certificate_identities(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert) else {
        tracing::debug!("a client certificate passed verification but cannot be parsed");
        return Vec::new();
    };
    let mut names: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        if !name.is_empty() && !names.iter().any(|known| known == name) {
            names.push(name.to_owned());
        }
    };
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            add(cn);
        }
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) = name
            {
                add(s);
            }
        }
    }
    names
}

/// What the files held at one check. Read errors are kept rather than returned, so that a
/// missing file is a state to compare like any other.
struct Contents {
    cert: io::Result<Vec<u8>>,
    key: io::Result<Zeroizing<Vec<u8>>>,
    client_ca: Option<io::Result<Vec<u8>>>,
}

/// SHA-256 over the files' contents: compares contents, not timestamps, so rewrites within
/// one mtime tick and copies that preserve mtimes are still seen.
type Fingerprint = Vec<u8>;

impl Contents {
    fn read(files: &Files) -> Self {
        Self {
            cert: std::fs::read(&files.cert),
            key: std::fs::read(&files.key).map(Zeroizing::new),
            client_ca: files.client_ca.as_ref().map(std::fs::read),
        }
    }

    fn fingerprint(&self) -> Fingerprint {
        fn part(hash: &mut Sha256, contents: Option<&io::Result<impl AsRef<[u8]>>>) {
            match contents {
                None => hash.update([0]),
                Some(Err(_)) => hash.update([1]),
                Some(Ok(bytes)) => {
                    let bytes = bytes.as_ref();
                    hash.update([2]);
                    hash.update((bytes.len() as u64).to_be_bytes());
                    hash.update(bytes);
                }
            }
        }
        let mut hash = Sha256::new();
        part(&mut hash, Some(&self.cert));
        part(&mut hash, Some(&self.key));
        part(&mut hash, self.client_ca.as_ref());
        hash.finalize().to_vec()
    }
}

struct Built {
    config: Arc<ServerConfig>,
    subject: String,
    not_after: String,
}

fn readable<'a, T: AsRef<[u8]>>(
    setting: &'static str,
    path: &Path,
    contents: &'a io::Result<T>,
) -> Result<&'a [u8], TlsFileError> {
    contents
        .as_ref()
        .map(AsRef::as_ref)
        .map_err(|e| TlsFileError::new(setting, path, format!("cannot read the file: {e}")))
}

/// PEM problems are described by class only: the parser's own messages can quote a line of
/// the file, and for the key file that line could be key material.
fn pem_problem(error: &rustls_pki_types::pem::Error, wanted: &str) -> String {
    match error {
        rustls_pki_types::pem::Error::NoItemsFound => format!("no {wanted} block in the PEM file"),
        _ => format!("malformed PEM (a damaged or truncated block) where a {wanted} was expected"),
    }
}

fn certificates(
    setting: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsFileError::new(setting, path, pem_problem(&e, "CERTIFICATE")))?;
    if certs.is_empty() {
        return Err(TlsFileError::new(
            setting,
            path,
            "no CERTIFICATE block in the PEM file",
        ));
    }
    Ok(certs)
}

fn build(files: &Files, contents: &Contents) -> Result<Built, TlsFileError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

    let chain = certificates(
        CERT_ENV,
        &files.cert,
        readable(CERT_ENV, &files.cert, &contents.cert)?,
    )?;
    let (subject, not_after) = match x509_parser::parse_x509_certificate(&chain[0]) {
        Ok((_, leaf)) => describe(&leaf),
        Err(_) => {
            return Err(TlsFileError::new(
                CERT_ENV,
                &files.cert,
                "the first certificate is not a valid X.509 certificate",
            ));
        }
    };

    let key_pem = readable(KEY_ENV, &files.key, &contents.key)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        TlsFileError::new(
            KEY_ENV,
            &files.key,
            pem_problem(&e, "PRIVATE KEY (PKCS#8, PKCS#1 or SEC1)"),
        )
    })?;

    let verifier = match &files.client_ca {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(ca_path) => {
            let ca_pem = readable(
                CLIENT_CA_ENV,
                ca_path,
                contents.client_ca.as_ref().ok_or_else(|| {
                    TlsFileError::new(CLIENT_CA_ENV, ca_path, "the file was not read")
                })?,
            )?;
            let mut roots = RootCertStore::empty();
            for (n, ca) in certificates(CLIENT_CA_ENV, ca_path, ca_pem)?
                .into_iter()
                .enumerate()
            {
                roots.add(ca).map_err(|e| {
                    TlsFileError::new(
                        CLIENT_CA_ENV,
                        ca_path,
                        format!("certificate #{} is not a usable CA: {e}", n + 1),
                    )
                })?;
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let builder = match files.client_auth {
                ClientAuth::Optional => builder.allow_unauthenticated(),
                ClientAuth::Required => builder,
            };
            builder.build().map_err(|e| {
                TlsFileError::new(CLIENT_CA_ENV, ca_path, format!("unusable CA bundle: {e}"))
            })?
        }
    };

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            TlsFileError::new(
                CERT_ENV,
                &files.cert,
                format!("the crypto provider refused TLS 1.2/1.3: {e}"),
            )
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsFileError::new(
                KEY_ENV,
                &files.key,
                format!("the private key does not belong to the certificate in {CERT_ENV}"),
            ),
            rustls::Error::InvalidCertificate(e) => {
                TlsFileError::new(CERT_ENV, &files.cert, format!("invalid certificate: {e}"))
            }
            // Key loading reports a fixed sentence (no key bytes), but classify it ourselves anyway.
            _ => TlsFileError::new(
                KEY_ENV,
                &files.key,
                "not a private key that can be used (RSA, ECDSA or Ed25519 expected)",
            ),
        })?;
    // gRPC is HTTP/2 only; a client offering only other protocols fails at the handshake
    // rather than after it.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Built {
        config: Arc::new(config),
        subject,
        not_after,
    })
}

fn describe(leaf: &X509Certificate<'_>) -> (String, String) {
    (
        leaf.subject().to_string(),
        leaf.validity().not_after.to_string(),
    )
}
