//! Wiring of the `sori` binary: configuration (flags, `SORI_*` environment, optional TOML
//! file), store selection by URL scheme, and the server lifecycle. Tests and benchmarks use
//! [`start`] to run a real server on a free port.

pub mod config;
pub mod transfer;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use sori_app::{App, ChannelCredentials, ChannelSpec};
use sori_store::Store;
use sori_store_postgres::PostgresStore;
use sori_store_sqlite::SqliteStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::Config;

/// Opens a store that must exist already (`import`, `export`, `channel set`): a mistyped
/// `--data-dir` is an error, not a new empty store left behind.
pub async fn open_existing_store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    if cfg.database_url.is_none() {
        let file = cfg.data_dir.join("sori.db");
        if !file.exists() {
            anyhow::bail!(
                "no Sori store at {}: run `sori serve` or `sori channel create` with this \
                 --data-dir first, or pass the --data-dir or --database-url of an existing one",
                file.display()
            );
        }
    }
    open_store(cfg).await
}

/// Opens the store the configuration names and applies migrations.
pub async fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let url = cfg.database_url();
    let store: Arc<dyn Store> =
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Arc::new(
                PostgresStore::connect(&url, cfg.pg_max_connections)
                    .await
                    .context("connecting to PostgreSQL")?,
            )
        } else if url.starts_with("sqlite:") {
            ensure_data_dir(cfg)?;
            if let Some(db) = sori_store_sqlite::database_file(&url) {
                folder_exists(&db)?;
            }
            Arc::new(
                SqliteStore::connect(&url).await.with_context(|| {
                    format!("opening the SQLite database {}", config::redact(&url))
                })?,
            )
        } else {
            anyhow::bail!(
                "database URL must start with sqlite: or postgres:// (got `{}`)",
                config::redact(&url)
            );
        };
    store.migrate().await.context("applying migrations")?;
    Ok(store)
}

/// Builds the services over a store.
pub async fn app(cfg: &Config, store: Arc<dyn Store>) -> anyhow::Result<App> {
    app_with(cfg, store, true).await
}

/// The services for a one-off command; `audience` builds the audience projections (only
/// `sori export --segment` counts an audience).
pub async fn app_with(cfg: &Config, store: Arc<dyn Store>, audience: bool) -> anyhow::Result<App> {
    // SQLite has one writer connection. On PostgreSQL each shard's batch pays a fixed cost
    // (two round trips, a commit), so fewer, bigger batches win until PostgreSQL's work on
    // a batch needs more than one core: one shard per two cores.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let shards = cfg.writer_shards.unwrap_or(if store.backend() == "sqlite" {
        1
    } else {
        (cores / 2).max(1)
    });
    Ok(App::new(store, shards, audience).await?)
}

/// Creates a channel and returns its one-time credentials.
pub async fn create_channel(app: &App, spec: ChannelSpec) -> anyhow::Result<ChannelCredentials> {
    app.create_channel(spec)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// A running server.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The services (for tests that need direct access).
    pub app: App,
    /// Credentials of the default channel, when this start created it.
    pub first_channel: Option<ChannelCredentials>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    retention: JoinHandle<()>,
    audience: JoinHandle<()>,
    /// The SQLite store's serve lock, held until the server is dropped (see `claim_store`).
    _serving: Option<std::fs::File>,
}

/// How often the audience projections follow the change sequence between queries.
const AUDIENCE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// How long a graceful shutdown waits for open requests before the server stops anyway.
/// Kept well under the 10 s a container runtime waits before it kills: the store still
/// closes after it.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How often the retention job looks for expired events.
const RETENTION_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
/// When after start the retention job first looks.
const RETENTION_FIRST: std::time::Duration = std::time::Duration::from_secs(60);

impl Running {
    /// Stops accepting, finishes in-flight requests and waits.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.retention.abort();
        self.audience.abort();
        self.task.await??;
        Ok(())
    }

    /// Waits until the server ends (after a signal, see [`Running::shutdown_on_signal`]).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await??;
        Ok(())
    }

    /// Turns SIGTERM / Ctrl-C into a graceful shutdown. The handlers are installed before
    /// this returns, so a signal sent right after start-up is not lost.
    pub fn shutdown_on_signal(&mut self) -> anyhow::Result<()> {
        let stop = stop_signal()?;
        if let Some(tx) = self.shutdown.take() {
            tokio::spawn(async move {
                stop.await;
                tracing::info!("shutting down");
                let _ = tx.send(());
            });
        }
        Ok(())
    }
}

/// Resolves on Ctrl-C or SIGTERM, so a long command can end cleanly (the server drains,
/// an export removes its partial file). The SIGTERM handler is installed before this
/// returns.
pub fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// Creates the default channel on an empty store, once however many nodes start on it at
/// the same moment (two replicas of a fresh deployment): the node whose claim the store
/// keeps creates it; another waits for it to appear, and creates it itself only if it has
/// not after 10 s (the claiming node died first).
async fn first_channel(cfg: &Config, app: &App) -> anyhow::Result<Option<ChannelCredentials>> {
    let store = &app.store;
    if store.count_channels().await? > 0 {
        return Ok(None);
    }
    let mine = sori_app::secrets::random_hex(16);
    if store
        .meta_get_or_insert("first_channel_claim", &mine)
        .await?
        != mine
    {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if store.count_channels().await? > 0 {
                return Ok(None);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        tracing::warn!("the node that claimed the first channel did not create it; creating it");
    }
    let spec = ChannelSpec {
        name: "Default".into(),
        owner_email: cfg.owner_email.clone(),
        owner_password: None,
        time_zone: None,
    };
    Ok(Some(create_channel(app, spec).await?))
}

/// Opens the store, binds the listener, creates the default channel on an empty store and
/// serves in a background task. The listener is bound before this returns, so callers can
/// connect at once.
pub async fn start(cfg: &Config) -> anyhow::Result<Running> {
    let serving = claim_store(cfg)?;
    let store = open_store(cfg).await?;
    let app = app(cfg, store.clone()).await?;
    // Bound once the store is ready (a TCP probe should not pass before), and before the
    // first channel is made: its secrets are printed once, after this returns, so a port
    // already taken must stop the start before they exist.
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let first_channel = first_channel(cfg, &app).await?;
    let addr = listener.local_addr()?;
    let router = sori_http::router(app.clone(), &cfg.http());
    let header_timeout = cfg.header_timeout;
    let (tx, rx) = oneshot::channel::<()>();
    let stopping = Arc::new(tokio::sync::Notify::new());
    let stopped = stopping.clone();
    let task = tokio::spawn(async move {
        let serve = sori_http::serve(listener, router, header_timeout, async move {
            let _ = rx.await;
            stopped.notify_one();
        });
        // In-flight requests get SHUTDOWN_GRACE to finish; a connection that never
        // completes its request (a stalled or malicious client) must not hold a restart.
        tokio::select! {
            () = serve => Ok(()),
            () = async {
                stopping.notified().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("connections still open {} s after shutdown began; closing them", SHUTDOWN_GRACE.as_secs());
                Ok(())
            }
        }
    });
    // The user-agent parsers take ~100 ms to build: off the first visit's path.
    tokio::task::spawn_blocking(sori_domain::user_agent::warm);
    let retention = tokio::spawn(app.clone().retention_loop(RETENTION_FIRST, RETENTION_EVERY));
    let audience = tokio::spawn(app.clone().audience_loop(AUDIENCE_EVERY));
    Ok(Running {
        addr,
        app,
        first_channel,
        shutdown: Some(tx),
        task,
        retention,
        audience,
        _serving: serving,
    })
}

/// Locks `<database>-serve.lock` beside a SQLite store for as long as the server runs, so
/// a second `sori serve` on the same store stops with a clear message instead of running
/// beside the first: each would keep its own in-memory state (audience projections,
/// caches, rate limits) and its own checkpoints over one file. The CLI's other commands
/// (import, export, channel) take no lock and may run beside a server. The operating
/// system releases the lock when the process ends, however it ends. The path is resolved
/// through symbolic links, so two names of one file share one lock. Where locks cannot be
/// taken at all (some network file systems), the server starts with a warning.
fn claim_store(cfg: &Config) -> anyhow::Result<Option<std::fs::File>> {
    let url = cfg.database_url();
    let Some(db) = url
        .starts_with("sqlite:")
        .then(|| sori_store_sqlite::database_file(&url))
        .flatten()
    else {
        return Ok(None);
    };
    ensure_data_dir(cfg)?;
    folder_exists(&db)?;
    let mut path = real_path(&db).into_os_string();
    path.push("-serve.lock");
    let path = std::path::PathBuf::from(path);
    let locked = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(std::fs::TryLockError::Error)
        .and_then(|file| file.try_lock().map(|()| file));
    match locked {
        Ok(file) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another `sori serve` is running on this store ({} is locked): stop it first, \
             or give this server its own --data-dir (only PostgreSQL stores are shared \
             by several servers)",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!(
                lock = %path.display(),
                error = %e,
                "cannot lock the store; nothing stops a second `sori serve` on it"
            );
            Ok(None)
        }
    }
}

/// `p` through symbolic links; for a file not created yet, its directory's real path.
fn real_path(p: &std::path::Path) -> std::path::PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        match (std::fs::canonicalize(dir), p.file_name()) {
            (Ok(dir), Some(name)) => dir.join(name),
            _ => p.to_path_buf(),
        }
    })
}

/// Refuses a SQLite database in a folder that does not exist, for which SQLite says only
/// "unable to open database file".
fn folder_exists(db: &std::path::Path) -> anyhow::Result<()> {
    match db.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => anyhow::bail!(
            "the folder {} of the SQLite database does not exist: create it first (a \
             --data-dir is created for you)",
            dir.display()
        ),
        _ => Ok(()),
    }
}

/// Creates the default data directory (a configured database URL names its own place).
fn ensure_data_dir(cfg: &Config) -> anyhow::Result<()> {
    if cfg.database_url.is_none() {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    }
    Ok(())
}
