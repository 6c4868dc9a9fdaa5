//! Load benchmarks against a real `sori serve` process.
//!
//! `sori-bench upsert` starts the release binary on a fresh store (SQLite in a temp dir, or
//! a fresh PostgreSQL database), then drives `PUT /open/v5/users/@{memberId}` with realistic
//! profiles from N keep-alive connections (wrk) for a fixed time, and prints throughput and
//! latency percentiles. Every acknowledged upsert is durable (SQLite `synchronous=FULL`,
//! PostgreSQL `synchronous_commit=on`).

mod audience;
mod cpu;
mod generate;
mod ingest;
mod upsert;
mod wrk;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(about = "Sori load benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Subcommand)]
enum Cmd {
    /// Concurrent member upserts with realistic profiles.
    Upsert {
        /// Store to run against.
        #[arg(long, value_enum, default_value = "sqlite")]
        backend: Backend,
        /// Admin URL of a PostgreSQL server (a fresh database is created on it).
        #[arg(long, env = "SORI_BENCH_PG_URL")]
        pg_url: Option<String>,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Seconds of measured load (after a 2 s warm-up run).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Distinct members (upserts beyond this update existing users).
        #[arg(long, default_value_t = 200_000)]
        members: u64,
        /// The sori binary to start.
        #[arg(long, default_value = "target/release/sori")]
        sori: PathBuf,
        /// Drive an already running server instead (with --access-key/--access-secret).
        #[arg(long)]
        base_url: Option<String>,
        /// Access key for --base-url.
        #[arg(long, default_value = "")]
        access_key: String,
        /// Access secret for --base-url.
        #[arg(long, default_value = "")]
        access_secret: String,
    },
    /// Audience counts over generated users: Sori's in-memory engine against PostgreSQL
    /// (JSONB profile, tuned indexes) and DuckDB (typed columns) on the same data.
    Audience {
        /// Users to generate (about 20 events each).
        #[arg(long, default_value_t = 1_000_000)]
        users: u64,
        /// Seed of the generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Admin URL of a PostgreSQL server (a fresh database is created on it).
        #[arg(long, env = "SORI_BENCH_PG_URL")]
        pg_url: Option<String>,
        /// Timed counts per filter on Sori.
        #[arg(long, default_value_t = 50)]
        sori_runs: usize,
        /// Timed counts per filter on PostgreSQL and DuckDB.
        #[arg(long, default_value_t = 5)]
        peer_runs: usize,
    },
    /// Generates realistic users and events into a Sori store (a new channel, whose
    /// credentials are printed), for trying filters by hand.
    Generate {
        /// Users to generate (about 20 events each).
        #[arg(long, default_value_t = 100_000)]
        users: u64,
        /// Seed of the generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Data directory of the SQLite store.
        #[arg(long, default_value = "./sori-data")]
        data_dir: PathBuf,
        /// Database URL instead of the data directory's SQLite file.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Event ingestion through the Segment-compatible API, driven by wrk: batches of 100
    /// events, and one event per request, each also against the no-op endpoint.
    Ingest {
        /// Store to run against.
        #[arg(long, value_enum, default_value = "sqlite")]
        backend: Backend,
        /// Admin URL of a PostgreSQL server (a fresh database is created on it).
        #[arg(long, env = "SORI_BENCH_PG_URL")]
        pg_url: Option<String>,
        /// Seconds of load per run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Connections for the batched runs.
        #[arg(long, default_value_t = 32)]
        batch_connections: usize,
        /// Connections for the one-event-per-request runs.
        #[arg(long, default_value_t = 64)]
        single_connections: usize,
        /// Which loads to run: `batch` (Segment `/v1/batch`), `single` (`/v1/track`),
        /// `openapi` (Open API batches of one member's events).
        #[arg(long, value_delimiter = ',', default_value = "batch,single,openapi")]
        runs: Vec<String>,
        /// The sori binary to start.
        #[arg(long, default_value = "target/release/sori")]
        sori: PathBuf,
    },
}

struct Server {
    child: Option<Child>,
    base: String,
    key: String,
    secret: String,
    write_key: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// The server's process id (for its CPU time).
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_server(bin: &PathBuf, database_url: Option<&str>) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cmd = Command::new(bin);
    cmd.args(["--data-dir"]).arg(dir.path());
    if let Some(url) = database_url {
        cmd.args(["--database-url", url]);
    }
    let mut child = cmd
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--rate-limit",
            "0",
            "--bench-endpoints",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with cargo build --release)",
                bin.display()
            )
        })?;
    let out = child.stdout.take().context("stdout")?;
    let (mut key, mut secret, mut write_key) = (String::new(), String::new(), String::new());
    for line in BufReader::new(out).lines() {
        let line = line?;
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("accessKey"), Some(v)) => key = v.to_owned(),
            (Some("accessSecret"), Some(v)) => secret = v.to_owned(),
            (Some("writeKey"), Some(v)) => write_key = v.to_owned(),
            _ => {}
        }
        if line.starts_with("Sori is listening") {
            break;
        }
    }
    if key.is_empty() || secret.is_empty() {
        bail!("server did not print credentials");
    }
    Ok(Server {
        child: Some(child),
        base: format!("http://127.0.0.1:{port}"),
        key,
        secret,
        write_key,
        _dir: dir,
    })
}

async fn fresh_pg_database(admin: &str) -> anyhow::Result<String> {
    let name = format!("sori_bench_{}", std::process::id());
    let status = Command::new("psql")
        .args([
            admin,
            "-q",
            "-c",
            &format!("DROP DATABASE IF EXISTS {name}"),
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .status()
        .context("running psql")?;
    if !status.success() {
        bail!("could not create benchmark database");
    }
    let (base, _) = admin
        .rsplit_once('/')
        .context("admin URL needs a database part")?;
    Ok(format!("{base}/{name}"))
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Starts the server on a fresh store of `backend`; returns it and the machine's cores.
async fn start_for(
    backend: Backend,
    pg_url: Option<String>,
    sori: &PathBuf,
) -> anyhow::Result<(Server, usize)> {
    let url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let admin =
                pg_url.context("--pg-url (or SORI_BENCH_PG_URL) is required for postgres")?;
            Some(fresh_pg_database(&admin).await?)
        }
    };
    let server = start_server(sori, url.as_deref())?;
    Ok((
        server,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // In-process runs (audience, generate) report what the services log, e.g. build times.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,sori_app=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Upsert {
            backend,
            pg_url,
            clients,
            seconds,
            members,
            sori,
            base_url,
            access_key,
            access_secret,
        } => {
            if let Some(base) = base_url {
                let server = Server {
                    child: None,
                    base,
                    key: access_key,
                    secret: access_secret,
                    write_key: String::new(),
                    _dir: tempfile::tempdir()?,
                };
                return upsert::run(&server, clients, seconds, members);
            }
            let (server, cores) = start_for(backend, pg_url, &sori).await?;
            println!(
                "backend {} | {clients} clients | {seconds} s | {members} members | {cores} cores (server and load generator share them)",
                backend.name()
            );
            upsert::run(&server, clients, seconds, members)?;
        }
        Cmd::Audience {
            users,
            seed,
            pg_url,
            sori_runs,
            peer_runs,
        } => audience::run(users, seed, pg_url, sori_runs, peer_runs).await?,
        Cmd::Generate {
            users,
            seed,
            data_dir,
            database_url,
        } => audience::generate_into(users, seed, data_dir, database_url).await?,
        Cmd::Ingest {
            backend,
            pg_url,
            seconds,
            batch_connections,
            single_connections,
            runs,
            sori,
        } => {
            let (server, cores) = start_for(backend, pg_url, &sori).await?;
            println!(
                "backend {} | {seconds} s per run | {cores} cores shared by server and wrk (2 threads)",
                backend.name()
            );
            ingest::run(
                &server,
                seconds,
                batch_connections,
                single_connections,
                &runs,
            )
            .await?;
        }
    }
    Ok(())
}
