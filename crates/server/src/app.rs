//! Wiring: configuration → store → encryption → domain services → gRPC and HTTP servers,
//! and graceful shutdown on SIGTERM/SIGINT (the phases are in [`crate::shutdown`]).

use std::{path::Path, sync::Arc};

use anyhow::{Context, Result, bail};
use secrecy::ExposeSecret;
use tokenvend_core::{
    Deps,
    access::{Authorizer, Callers},
    admin::Admin,
    audit::Auditor,
    cache::TokenCache,
    clock::SystemClock,
    crypto::{Envelope, KeyRing},
    events::Notifier,
    grants::{Grants, GrantsConfig},
    oauth::{TokenClient, TokenClientConfig},
    vend::Vendor,
};
use tokenvend_proto::v1::{
    admin_service_server::AdminServiceServer, token_service_server::TokenServiceServer,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;

use crate::{
    auth::AuthLayer,
    config::{DbArgs, ServeArgs},
    grpc::{admin::AdminApi, token::TokenApi},
    metrics::Metrics,
    preflight::{self, Checked},
    shutdown::{self, Lifecycle, Outcome, Shutdown, Signals},
};

/// API keys' last use is written this often (coarse on purpose: not a write per call).
const LAST_USED_FLUSH: std::time::Duration = std::time::Duration::from_secs(60);

/// Old audit events are purged this often.
const AUDIT_PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// At most this long for releasing refresh leases at shutdown, after the drain.
const LEASE_RELEASE_BUDGET: std::time::Duration = std::time::Duration::from_secs(3);

/// The master key ring: from TOKENVEND_MASTER_KEYS, or in embedded mode a development key
/// kept in the data directory (generated on first start, with a loud warning).
pub fn load_key_ring(db: &DbArgs) -> Result<KeyRing> {
    if let Some(spec) = &db.master_keys {
        return KeyRing::parse(spec.expose_secret()).context("TOKENVEND_MASTER_KEYS");
    }
    if !db.is_embedded() {
        bail!(
            "TOKENVEND_MASTER_KEYS is required with an external database; generate one with `tokenvend keygen`"
        );
    }
    let path = db.data_dir.join("master.key");
    let spec = if path.exists() {
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?
    } else {
        std::fs::create_dir_all(&db.data_dir)
            .with_context(|| format!("creating {}", db.data_dir.display()))?;
        let entry = KeyRing::generate_entry("dev");
        write_private(&path, entry.as_bytes())?;
        entry.to_string()
    };
    tracing::warn!(
        path = %path.display(),
        "USING A DEVELOPMENT MASTER KEY stored next to the database: anyone who can read the data \
         directory can decrypt every secret. Set TOKENVEND_MASTER_KEYS (see `tokenvend keygen`) for production"
    );
    KeyRing::parse(spec.trim()).context("development master key file")
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let Checked {
        policy,
        vendor_config,
        provider_proxy,
        tls,
        limits,
    } = preflight::check(&args)?;
    if args.bootstrap_admin_key.is_none() {
        tracing::warn!(
            "TOKENVEND_BOOTSTRAP_ADMIN_KEY is not set: only principals' API keys are accepted. For a first \
             set-up, generate a key with `tokenvend keygen --api-key`, set it, create an admin principal \
             and its key, then unset it"
        );
    }
    if args.allow_insecure_endpoints {
        tracing::warn!(
            "TOKENVEND_ALLOW_INSECURE_ENDPOINTS=true: http:// and internal provider URLs are allowed (development only)"
        );
    }
    if tls.is_some() {
        tracing::info!(
            client_certificates = args.tls.client_ca_file.is_some(),
            "TLS on the gRPC port"
        );
    } else {
        tracing::warn!(
            "the gRPC port is plaintext (development default): set TOKENVEND_TLS_CERT_FILE and TOKENVEND_TLS_KEY_FILE, or terminate TLS in front of it"
        );
    }
    if let Some(proxy) = &provider_proxy {
        // The host only: a proxy URL may carry credentials.
        tracing::info!(
            proxy_host = proxy.host_str(),
            "provider calls go through the configured proxy"
        );
    }
    let replica = args.replica_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "tokenvend".into());
        format!("{host}-{:08x}", rand::random::<u32>())
    });
    let ring = load_key_ring(&args.db)?;
    let store = tokenvend_store::open(&args.db.url(), true)
        .await
        .context("opening the database")?;
    let envelope = Arc::new(Envelope::new(ring, store.clone()));
    // A ring that lacks a master key still wrapping data would fail every decryption of it.
    envelope.check_ring().await?;
    if !args.rewrap_interval.is_zero() {
        tokio::spawn(rewrap_in_background(envelope.clone(), args.rewrap_interval));
    }
    let cache = Arc::new(TokenCache::new());
    let metrics = args.metrics.then(|| Arc::new(Metrics::new(cache.clone())));
    let clock = Arc::new(SystemClock);
    let client = TokenClient::new(TokenClientConfig {
        request_timeout: args.provider_timeout,
        connect_timeout: args.provider_timeout.min(std::time::Duration::from_secs(3)),
        allow_insecure: args.allow_insecure_endpoints,
        proxy: provider_proxy,
        ..Default::default()
    })
    .context("building the HTTP client")?;
    let client = match &metrics {
        Some(metrics) => client.with_observer(metrics.clone()),
        None => client,
    };
    let tracing_enabled = crate::telemetry::otlp_endpoint().is_some();
    let client = if tracing_enabled {
        client.with_trace_context(Arc::new(crate::rpc_trace::W3cTraceContext))
    } else {
        client
    };
    let notifier = Notifier::new(replica.clone());
    let deps = Deps {
        store: store.clone(),
        envelope,
        cache,
        client,
        clock,
        notifier: notifier.clone(),
    };
    let vendor = Arc::new(Vendor::new(deps.clone(), vendor_config));
    // Other replicas' changes (and, on a gap in the feed, a full reload from the store).
    tokio::spawn({
        let vendor = vendor.clone();
        async move { vendor.apply_events().await }
    });
    let refresher = (!args.refresh_tick.is_zero()).then(|| {
        tokio::spawn(
            vendor
                .clone()
                .refresh_ahead(args.refresh_tick, args.refresh_concurrency.max(1)),
        )
    });
    let grants = Arc::new(Grants::new(
        deps.clone(),
        GrantsConfig {
            public_url: args.public_url.clone(),
            authorization_ttl: args.authorization_ttl,
            policy,
        },
    ));
    let admin = Arc::new(Admin::new(deps.clone(), policy, grants.clone()));

    // Callers: the decision is loaded before the first call is accepted, then follows every
    // replica's changes.
    let authorizer = Arc::new(Authorizer::new(
        args.bootstrap_admin_key.as_ref().map(|k| k.expose_secret()),
        deps.clock.clone(),
    ));
    authorizer
        .reload(store.as_ref())
        .await
        .context("loading callers and permissions")?;
    tokio::spawn(
        authorizer.clone().follow(
            store.clone(),
            args.access_reload_interval
                .max(std::time::Duration::from_secs(1)),
            LAST_USED_FLUSH,
        ),
    );
    let (auditor, audit_writer) = Auditor::new(store.clone(), deps.clock.clone());
    tokio::spawn(audit_writer);
    if !args.audit_retention.is_zero() {
        tokio::spawn(tokenvend_core::audit::purge(
            store.clone(),
            deps.clock.clone(),
            args.audit_retention,
            AUDIT_PURGE_EVERY,
        ));
    }
    let limits = Arc::new(limits);
    let callers = Arc::new(Callers::new(
        store.clone(),
        notifier.clone(),
        deps.clock.clone(),
    ));
    let auth = AuthLayer::new(authorizer.clone(), auditor.clone(), limits.clone());
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tokenvend_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // Python and Node reflection clients only speak v1alpha.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tokenvend_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TokenServiceServer<TokenApi>>().await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;
    let lifecycle = Lifecycle::new();
    // Administration needs the database; tokens do not (cache hits keep being served), so
    // only AdminService follows the database's health and "" / TokenService stay SERVING:
    // a readiness probe must not take every replica out during a database outage.
    tokio::spawn(watch_store(
        store.clone(),
        health.clone(),
        lifecycle.clone(),
    ));

    let grpc_listener = tokio::net::TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC address {}", args.grpc_addr))?;
    let http_listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding the HTTP address {}", args.http_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let signals = Signals::listen().context("listening for SIGTERM and SIGINT")?;

    let stop_accepting = CancellationToken::new();
    // The panic layer outermost: it also catches a panic in the layers inside it.
    let token_service = TokenServiceServer::new(TokenApi::new(
        vendor.clone(),
        auditor,
        limits,
        metrics.clone(),
        crate::grpc::watch::WatchDeps {
            authorizer,
            // WatchToken streams end when draining starts, so their clients reconnect to
            // another replica while the listeners close.
            stop: stop_accepting.clone(),
        },
    ));
    let routes = tonic::service::Routes::new(token_service.clone())
        .add_service(AdminServiceServer::new(AdminApi::new(
            admin,
            grants.clone(),
            callers,
        )))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    // GetToken skips the router (see `grpc::fast_path`); the layers apply to every call.
    let service = crate::grpc::fast_path::FastPath::new(token_service, routes);
    let grpc = tonic::transport::Server::builder()
        // HTTP/2 pings keep idle connections (and their WatchToken streams) alive through
        // proxies and load balancers, and find dead peers.
        .http2_keepalive_interval(Some(args.grpc_keepalive).filter(|d| !d.is_zero()))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .layer(crate::panic::grpc_layer())
        .layer(crate::rpc_trace::RpcTraceLayer::new(tracing_enabled))
        .layer(lifecycle.grpc_layer())
        .layer(auth);
    let grpc = {
        let stop = stop_accepting.clone();
        async move {
            match tls {
                Some(acceptor) => {
                    let _reloader = acceptor.spawn_reloader(stop.clone());
                    grpc.serve_with_incoming_shutdown(
                        service,
                        acceptor.incoming(grpc_listener),
                        stop.cancelled_owned(),
                    )
                    .await
                }
                None => {
                    grpc.serve_with_incoming_shutdown(
                        service,
                        // TCP_NODELAY: a small answer is sent at once, not held back by
                        // Nagle's algorithm waiting for more (one call at a time would wait
                        // for the client's delayed ACK).
                        tonic::transport::server::TcpIncoming::from(grpc_listener)
                            .with_nodelay(Some(true)),
                        stop.cancelled_owned(),
                    )
                    .await
                }
            }
        }
    };
    let router = crate::http::router(store, grants, lifecycle.clone(), metrics)
        .layer(lifecycle.http_layer())
        .layer(crate::panic::http_layer());
    let http = axum::serve(http_listener, router)
        .with_graceful_shutdown(stop_accepting.clone().cancelled_owned());
    let servers = async {
        let (g, h) = tokio::join!(grpc, async { http.await });
        g.context("gRPC server")?;
        h.context("HTTP server")?;
        Ok(())
    };

    tracing::info!(grpc = %grpc_addr, http = %http_addr, database = if args.db.is_embedded() { "sqlite" } else { "postgres" }, "tokenvend listening");
    let outcome = Shutdown {
        settings: shutdown::Settings {
            delay: args.shutdown_delay,
            timeout: args.shutdown_timeout,
        },
        lifecycle,
        health,
        health_services: vec![
            "",
            <TokenServiceServer<TokenApi> as NamedService>::NAME,
            <AdminServiceServer<AdminApi> as NamedService>::NAME,
        ],
        stop_accepting,
    }
    .serve_until_signal(servers, signals)
    .await?;
    finish(&vendor, refresher, outcome).await;
    Ok(())
}

/// After the drain: stop renewing, give up the refresh leases, say how it ended.
async fn finish(vendor: &Vendor, refresher: Option<JoinHandle<()>>, outcome: Outcome) {
    // No new renewal rounds (and so no new leases) once the leases are being given up.
    if let Some(refresher) = refresher {
        refresher.abort();
    }
    // Bounded: the orchestrator's kill deadline is near, and leases expire on their own.
    if tokio::time::timeout(LEASE_RELEASE_BUDGET, release_held_leases(vendor))
        .await
        .is_err()
    {
        tracing::warn!(
            "releasing refresh leases took over {LEASE_RELEASE_BUDGET:?}; they expire on their own"
        );
    }
    match outcome {
        Outcome::Drained => tracing::info!("shut down cleanly"),
        Outcome::Cut { calls } => tracing::warn!(calls, "shut down with {calls} calls cut"),
    }
}

/// Gives up the refresh leases this replica holds, so another replica can refresh those
/// tokens at once instead of waiting for the leases to expire (up to TOKENVEND_LEASE_TTL).
async fn release_held_leases(vendor: &Vendor) {
    match vendor.release_leases().await {
        Ok(n) => tracing::info!(leases = n, "released refresh leases held by this replica"),
        Err(e) => {
            tracing::warn!(error = %e, "could not release refresh leases; they expire on their own")
        }
    }
}

/// Follows the database's health for AdminService, until shutdown: from then on every
/// service stays NOT_SERVING, whatever the database does.
async fn watch_store(
    store: Arc<dyn tokenvend_core::store::Store>,
    health: tonic_health::server::HealthReporter,
    lifecycle: Lifecycle,
) {
    let mut serving = true;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let ok = matches!(
            tokio::time::timeout(std::time::Duration::from_secs(2), store.ping()).await,
            Ok(Ok(()))
        );
        if lifecycle.is_draining() {
            return;
        }
        if ok != serving {
            serving = ok;
            if ok {
                tracing::info!("database reachable again: AdminService SERVING");
                health.set_serving::<AdminServiceServer<AdminApi>>().await;
            } else {
                tracing::warn!(
                    "database unreachable: AdminService NOT_SERVING; cached tokens are still served"
                );
                health
                    .set_not_serving::<AdminServiceServer<AdminApi>>()
                    .await;
            }
        }
    }
}

/// Data keys re-wrapped per store round trip.
const REWRAP_BATCH: u32 = 100;

/// Re-wraps data keys under the active master key at start-up and then every `every`, so a
/// rotated master key needs no manual step (replicas doing it at once are harmless: each key
/// is re-wrapped by one conditional update).
async fn rewrap_in_background(envelope: Arc<Envelope>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match envelope.rewrap(REWRAP_BATCH).await {
            Ok(done) if done.unreadable > 0 => tracing::warn!(
                rewrapped = done.rewrapped,
                unreadable = done.unreadable,
                "some data keys could not be re-wrapped: their master key is missing from TOKENVEND_MASTER_KEYS"
            ),
            Ok(done) if done.rewrapped > 0 => tracing::info!(
                rewrapped = done.rewrapped,
                "re-wrapped data keys under the active master key"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "re-wrapping data keys failed; retrying at the next pass")
            }
        }
    }
}

/// `tokenvend rewrap`: one full pass, with counts. Fails if any data key could not be
/// re-wrapped (its master key is not in the ring), so a script can stop before removing it.
pub async fn rewrap(db: DbArgs) -> Result<()> {
    let ring = load_key_ring(&db)?;
    let active = ring.active().id.clone();
    let store = tokenvend_store::open(&db.url(), true)
        .await
        .context("opening the database")?;
    let done = Envelope::new(ring, store).rewrap(REWRAP_BATCH).await?;
    println!(
        "re-wrapped {} data key(s) under master key {active:?}; {} already done by another pass; {} could not be read",
        done.rewrapped, done.raced, done.unreadable
    );
    if done.unreadable > 0 {
        bail!(
            "{} data key(s) are wrapped by master keys missing from TOKENVEND_MASTER_KEYS; put them back and run rewrap again",
            done.unreadable
        );
    }
    Ok(())
}

pub async fn migrate(db: DbArgs) -> Result<()> {
    tokenvend_store::open(&db.url(), true)
        .await
        .context("migrating the database")?;
    tracing::info!("database schema is up to date");
    Ok(())
}
