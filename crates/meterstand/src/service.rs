//! Wiring of the long-running service and its ordered shutdown: stop intake, write and
//! acknowledge what is in flight, close the store, stop HTTP.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meterstand_api::{ApiParts, ApiState, Readiness};
use meterstand_codec::Limits;
use meterstand_ingest::{
    EmbeddedBroker, Ingest, IngestConfig, IngestError, IngestHandle, IngestStatus, MqttVersion,
    TlsFiles,
};
use meterstand_pseudonym::{KeyRing, Pseudonymiser};
use meterstand_store::{ReadingStore, RetentionPolicy, SystemClock};
use meterstand_store_rocks::{RocksStore, StoreConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;

pub fn init_logging(config: &Config) -> anyhow::Result<()> {
    meterstand_telemetry::init_logging(config.log.format, &config.log.level)?;
    Ok(())
}

pub fn store_config(config: &Config) -> anyhow::Result<StoreConfig> {
    Ok(StoreConfig {
        path: config.store.path.clone(),
        default_consent: config.consent.default,
        retention: RetentionPolicy {
            interval: config.retention.interval,
            day: config.retention.day,
            month: config.retention.month,
            statistics: config.retention.statistics,
            erasure_hold: config.erasure_hold(),
            ..RetentionPolicy::default()
        },
        compression: config.store.compression,
        calendar: config.privacy.timezone.clone(),
        sync: true,
        journal: Some(config.store.journal.clone()),
        memory: config.store.memory.0,
    })
}

pub fn ingest_config(config: &Config) -> IngestConfig {
    IngestConfig {
        url: config.broker.url.clone(),
        client_id: config.broker.client_id.clone(),
        topic_prefix: config.broker.topic_prefix.clone(),
        username: config.broker.username.clone(),
        password: config.broker.password.clone(),
        tls: TlsFiles {
            ca_file: config.broker.ca_file.clone(),
            client_cert: config.broker.client_cert.clone(),
            client_key: config.broker.client_key.clone(),
        },
        limits: Limits {
            max_payload_bytes: config.ingest.max_payload_bytes,
            max_readings: config.ingest.max_readings_per_message,
            max_future: jiff::SignedDuration::try_from(config.ingest.max_future)
                .unwrap_or(jiff::SignedDuration::MAX),
        },
        batch_max_messages: config.ingest.batch_max_messages,
        batch_max_delay: config.ingest.batch_max_delay,
        max_unacked: config.ingest.max_unacked,
        // Ingest's share of `store.memory`; the store takes the rest.
        max_unacked_bytes: usize::try_from(meterstand_store_rocks::ingest_share(
            config.store.memory.0,
        ))
        .unwrap_or(usize::MAX),
        keep_alive: config.broker.keep_alive,
        // The embedded broker (rumqttd) speaks MQTT 3.1.1 only.
        mqtt_version: if config.broker.embedded {
            MqttVersion::V311
        } else {
            config.broker.protocol
        },
        session_expiry: None,
        write_retries: config.ingest.write_retries,
        p1_boundary_window: config.p1.boundary_window,
        calendar: config.privacy.timezone.clone(),
        // `Service::start` passes the API's audit log, for the correction lines.
        audit: None,
        corrections: config.ingest.corrections,
    }
}

/// The HTTP server as started: its address, state, TLS and how to stop it.
struct Http {
    addr: std::net::SocketAddr,
    api: ApiState,
    tls: Option<meterstand_api::Tls>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Http {
    /// Binds `api.listen` and serves the API (HTTPS when configured) until stopped.
    async fn start(config: &Config, parts: ApiParts, file_limit: u64) -> anyhow::Result<Http> {
        let tls = match config.tls_files() {
            Some(files) => {
                Some(meterstand_api::Tls::load(files).context("loading the HTTPS certificate")?)
            }
            None => None,
        };
        let listener = TcpListener::bind(config.api.listen)
            .await
            .with_context(|| format!("binding api.listen {}", config.api.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(
            file_limit,
            max_connections = parts.config.max_connections,
            "http connection cap"
        );
        let state = ApiState::new(parts);
        let stop = CancellationToken::new();
        let (api, served_tls, stopped) = (state.clone(), tls.clone(), stop.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = meterstand_api::serve_with(listener, state, served_tls, stopped).await {
                tracing::error!(error = %e, "http server stopped");
            }
        });
        Ok(Http {
            addr,
            api,
            tls,
            stop,
            task,
        })
    }
}

/// The in-process broker of `broker.embedded` (loopback only), on `broker.url`'s address.
fn start_embedded_broker(config: &Config) -> anyhow::Result<()> {
    let listen = config.broker_listen()?;
    EmbeddedBroker::start(listen, config.ingest.max_payload_bytes.saturating_mul(4))?;
    tracing::info!(%listen, "embedded mqtt broker started");
    Ok(())
}

/// The pseudonymiser and the audit chain's keys, from the master key file (which is then
/// dropped from memory).
fn keys(
    config: &Config,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<(Arc<Pseudonymiser>, meterstand_audit::ChainKeys)> {
    let key_file = config.key_file(env);
    let ring = KeyRing::load(&key_file).with_context(|| {
        format!(
            "loading the master key (create one with `meterstand keygen --out {}`)",
            key_file.display()
        )
    })?;
    Ok((
        Arc::new(Pseudonymiser::new(&ring)),
        crate::audit::chain_keys(&ring),
    ))
}

/// Opens the store on a blocking thread.
async fn open_store(config: &Config) -> anyhow::Result<Arc<RocksStore>> {
    let store_config = store_config(config)?;
    let path = store_config.path.clone();
    let store =
        tokio::task::spawn_blocking(move || RocksStore::open(store_config, Arc::new(SystemClock)))
            .await?
            .with_context(|| format!("opening the store at {}", path.display()))?;
    Ok(Arc::new(store))
}

/// The retention sweep every `every` until `stop`.
async fn sweep_loop(store: Arc<RocksStore>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.sweep_retention()).await {
            Ok(Ok(removed)) if removed.total() > 0 => tracing::info!(
                interval = removed.interval,
                day = removed.day,
                month = removed.month,
                "retention sweep removed readings"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "retention sweep failed"),
            Err(e) => tracing::error!(error = %e, "retention sweep panicked"),
        }
    }
}

/// The statistics freeze: at start-up, then every minute (sooner with a short
/// `statistics.quiet`), on a blocking thread. A backlog (history loaded late) is frozen in
/// slices of `budget`, with a pause between them for ingest and the API.
fn freeze_loop(
    store: Arc<RocksStore>,
    config: &Config,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let freeze = meterstand_store::freeze::FreezeConfig {
        settle: config.statistics.settle,
        quiet: config.statistics.quiet,
        k: config.privacy.min_group_size,
        ..Default::default()
    };
    let every = config
        .statistics
        .quiet
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    let calendar = config.privacy.timezone.clone();
    async move {
        let mut next = Duration::ZERO;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(next) => {}
            }
            let (s, cal, cfg) = (store.clone(), calendar.clone(), freeze.clone());
            let run = tokio::task::spawn_blocking(move || {
                meterstand_store::freeze::run(s.as_ref(), &cal, &cfg, jiff::Timestamp::now())
            });
            next = every;
            match run.await {
                Ok(Ok(r)) => {
                    record_freeze(&r);
                    if r.periods > 0 {
                        tracing::info!(
                            periods = r.periods,
                            units = r.units,
                            pending = r.pending,
                            "statistics frozen"
                        );
                    }
                    if r.due_left > 0 {
                        // A slice of a backlog: the next one after a breath.
                        next = FREEZE_BACKLOG_PAUSE;
                    }
                }
                Ok(Err(e)) => tracing::error!(error = %e, "statistics freeze failed"),
                Err(e) => tracing::error!(error = %e, "statistics freeze panicked"),
            }
        }
    }
}

struct ServiceReadiness {
    store: Arc<RocksStore>,
    ingest: Arc<IngestStatus>,
}

impl Readiness for ServiceReadiness {
    fn store_open(&self) -> bool {
        self.store.is_healthy()
    }
    fn broker_receiving(&self) -> bool {
        self.ingest.is_receiving()
    }
    fn refresh_gauges(&self) {
        if let Err(e) = self.store.refresh_size_metrics() {
            tracing::warn!(error = %e, "cannot read store sizes");
        }
    }
}

/// A running service, stopped with [`Service::shutdown`].
pub struct Service {
    pub store: Arc<RocksStore>,
    pub status: Arc<IngestStatus>,
    pub api_addr: std::net::SocketAddr,
    pub api: ApiState,
    /// The HTTPS configuration, re-read by [`Service::reload_tls`]; `None`: plain HTTP.
    tls: Option<meterstand_api::Tls>,
    intake: CancellationToken,
    /// Stops the sweep and the freeze.
    background: CancellationToken,
    /// Stops the HTTP server, last.
    http_stop: CancellationToken,
    http: tokio::task::JoinHandle<()>,
    /// Taken by whoever watches for ingest's death (`run_until_signal`).
    ingest: Option<IngestHandle>,
    tracker: TaskTracker,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("api_addr", &self.api_addr)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Starts every part. One function on purpose: it reads as the start-up order (keys, store, broker, audit
    /// log, ingest, HTTP, background tasks) that `shutdown` reverses; each step is a call.
    pub async fn start(config: &Config, env: &BTreeMap<String, String>) -> anyhow::Result<Service> {
        config.preflight(env)?;
        // Before anything opens files: `api.max_connections` is sized from the raised limit.
        let file_limit = crate::access::raise_file_limit();
        let (pseudonymiser, audit_keys) = keys(config, env)?;
        let tokens = config.token_table()?;
        let store = open_store(config).await?;

        if config.broker.embedded {
            start_embedded_broker(config)?;
        }

        // Keyed, in monthly segments, compared with the head the store anchored (a removed
        // tail becomes an audit.gap line), then anchored in the store after every line.
        let (audit, anchored) = crate::audit::anchor::open_for_service(
            &config.api.audit_log,
            audit_keys.clone(),
            store.clone(),
        )?;
        let status = Arc::new(IngestStatus::default());
        let intake = CancellationToken::new();
        let ingest = Ingest::start(
            IngestConfig {
                // Corrections from the metering company are audited in the same chain.
                audit: Some(audit.clone()),
                ..ingest_config(config)
            },
            store.clone(),
            pseudonymiser.clone(),
            status.clone(),
            intake.clone(),
        )?;

        let background = CancellationToken::new();
        let tracker = TaskTracker::new();
        // The audit log: verified in full against the start-up anchor, then its head logged
        // and its retention applied every few minutes.
        tracker.spawn(crate::audit::anchor::watch(
            crate::audit::anchor::Watch {
                log: audit.clone(),
                keys: audit_keys,
                anchored,
                retention: config.retention.audit,
                every: crate::audit::anchor::WATCH_EVERY,
            },
            background.clone(),
        ));
        let Http {
            addr: api_addr,
            api,
            tls,
            stop: http_stop,
            task: http,
        } = Http::start(
            config,
            ApiParts {
                readiness: Arc::new(ServiceReadiness {
                    store: store.clone(),
                    ingest: status.clone(),
                }),
                backend: store.clone(),
                pseudonymiser,
                tokens,
                audit,
                calendar: config.privacy.timezone.clone(),
                config: config.api_config(),
            },
            file_limit,
        )
        .await?;
        tracker.spawn(sweep_loop(
            store.clone(),
            config.retention.sweep_interval,
            background.clone(),
        ));
        tracker.spawn(freeze_loop(store.clone(), config, background.clone()));
        tracing::info!(api = %api_addr, https = tls.is_some(), "meterstand running");
        Ok(Service {
            store,
            status,
            api_addr,
            api,
            tls,
            intake,
            background,
            http_stop,
            http,
            ingest: Some(ingest),
            tracker,
        })
    }

    /// Ordered shutdown: stop intake and acknowledge what was written, stop the sweep, close
    /// the store (flushing the WAL), then stop HTTP.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.intake.cancel();
        let ingest = match self.ingest {
            Some(handle) => handle.await,
            None => Ok(()),
        };
        self.background.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        // The final flush: its error is the shutdown's (the process exits non-zero), on
        // every path, however many clones of the store the API still holds.
        let store = self.store.clone();
        let closed = tokio::task::spawn_blocking(move || store.close()).await;
        // HTTP last: until here /healthz and /readyz answered (not ready once closed).
        self.http_stop.cancel();
        let _ = self.http.await;
        closed
            .context("the store's close task")?
            .context("closing the store (final flush)")?;
        tracing::info!("meterstand stopped");
        ingest.context("ingest")
    }

    /// Stops taking messages (the first step of the ordered shutdown).
    pub fn intake_cancel(&self) {
        self.intake.cancel();
    }

    /// The ingest handle, to watch for its death; [`Service::shutdown`] then no longer
    /// waits for it.
    pub fn take_ingest(&mut self) -> Option<IngestHandle> {
        self.ingest.take()
    }

    /// Re-reads the token table from the configuration (SIGHUP, `token revoke`): a token no
    /// longer listed is refused from the next request on. Fails closed, counted and audited
    /// ([`crate::access::reload_tokens`]).
    pub fn reload_tokens(
        &self,
        config_file: Option<&std::path::Path>,
        env: &BTreeMap<String, String>,
    ) -> crate::access::Reload {
        crate::access::reload_tokens(&self.api, config_file, env)
    }
}

impl Service {
    /// Re-reads the HTTPS certificate, key and client CA from the files named at start:
    /// connections accepted afterwards use them, connections in flight keep the old ones. On
    /// error the old ones stay. `Ok(false)` when the service serves plain HTTP.
    pub fn reload_tls(&self) -> anyhow::Result<bool> {
        match &self.tls {
            None => Ok(false),
            Some(tls) => {
                tls.reload()?;
                Ok(true)
            }
        }
    }
}

/// Runs the service until SIGTERM or Ctrl-C (then an ordered shutdown) or until ingest dies
/// (then an error, so that the process exits non-zero and its supervisor restarts it).
/// SIGHUP re-reads the token table and the HTTPS certificate files.
pub async fn run_until_signal(
    config: Config,
    config_file: Option<PathBuf>,
    env: BTreeMap<String, String>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut service = Service::start(&config, &env).await?;
    let mut ingest = service
        .take_ingest()
        .context("ingest handle already taken")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let stop = wait_for_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = hangup.recv() => {
                let r = service.reload_tokens(config_file.as_deref(), &env);
                let removed = r.removed.join(",");
                match &r.failure {
                    None => tracing::info!(tokens = r.tokens, generation = r.generation, %removed, "token table re-read"),
                    Some(e) => tracing::error!(error = %e, tokens = r.tokens, generation = r.generation, %removed, "cannot re-read the token table; only tokens still in the file are kept"),
                }
                match service.reload_tls() {
                    Ok(true) => tracing::info!("https certificate re-read"),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot re-read the https certificate; the old one stays"),
                }
            }
            died = &mut ingest => {
                let e = match died {
                    Ok(()) => IngestError::TaskFailed { task: "ingest", reason: "stopped unasked".into() },
                    Err(e) => e,
                };
                tracing::error!(error = %e, "ingest died; stopping with an error");
                if let Err(e) = service.shutdown().await {
                    tracing::error!(error = %e, "shutdown after ingest died");
                }
                return Err(anyhow::Error::new(e).context("ingest died"));
            }
        }
    }
    tracing::info!("shutting down");
    service.intake_cancel();
    let ingested = ingest.await;
    service.shutdown().await?;
    ingested.context("ingest")
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The pause between two slices of a backlog freeze: the store's threads and the API's
/// requests go first meanwhile.
const FREEZE_BACKLOG_PAUSE: Duration = Duration::from_millis(50);

/// Publishes what a freeze run left waiting.
fn record_freeze(r: &meterstand_store::freeze::FreezeReport) {
    use meterstand_store_rocks::metrics::{
        OLDEST_PENDING_SECONDS, OVERDUE_SECONDS, PENDING_PERIODS,
    };
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    PENDING_PERIODS.set(gauge(r.pending));
    OLDEST_PENDING_SECONDS.set(gauge(r.oldest_pending_seconds));
    OVERDUE_SECONDS.set(gauge(r.overdue_seconds));
}
