//! Configuration: defaults, then an optional TOML file, then `SORI_*` environment
//! variables and command-line flags (clap reads both; flags win).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Options shared by every command; each also reads `SORI_<NAME>`.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "SORI_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory of the embedded store [default: ./sori-data].
    #[arg(long, env = "SORI_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Database URL: postgres://… for PostgreSQL, sqlite://… for a SQLite file
    /// [default: the data directory's sori.db].
    #[arg(long, env = "SORI_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "SORI_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// User writer shards: write batches in flight at once (default 1 on SQLite, one per
    /// two cores on PostgreSQL).
    #[arg(long, env = "SORI_WRITER_SHARDS", global = true)]
    pub writer_shards: Option<usize>,
}

/// Options of `sori serve` only (each also reads `SORI_<NAME>`): the other commands do not
/// listen, so they do not accept these.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "SORI_LISTEN")]
    pub listen: Option<String>,
    /// Open API requests per second per access key, 0 for unlimited [default: 1000].
    #[arg(long, env = "SORI_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Open API burst per access key [default: 2000].
    #[arg(long, env = "SORI_RATE_BURST")]
    pub rate_burst: Option<u32>,
    /// Serve `POST /_noop`, the benchmarks' baseline endpoint (off by default: it is of no
    /// use to anyone else).
    #[arg(long, env = "SORI_BENCH_ENDPOINTS")]
    pub bench_endpoints: bool,
}

/// Longest `header_timeout_secs`: a day.
const MAX_HEADER_TIMEOUT_SECS: u64 = 86_400;

/// The TOML file's keys (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    listen: Option<String>,
    log_format: Option<LogFormat>,
    rate_limit: Option<u32>,
    rate_burst: Option<u32>,
    max_body_bytes: Option<usize>,
    cookie_secure: Option<bool>,
    writer_shards: Option<usize>,
    pg_max_connections: Option<u32>,
    owner_email: Option<String>,
    header_timeout_secs: Option<u64>,
}

/// Resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Explicit database URL, if any.
    pub database_url: Option<String>,
    /// Listen address.
    pub listen: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Open API rate per key (0 = off).
    pub rate_limit: u32,
    /// Open API burst per key.
    pub rate_burst: u32,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// `Secure` session cookie.
    pub cookie_secure: bool,
    /// User writer shards (default 1 on SQLite; on PostgreSQL see `sori::app`).
    pub writer_shards: Option<usize>,
    /// PostgreSQL pool size.
    pub pg_max_connections: u32,
    /// Owner e-mail of the default channel created on first start.
    pub owner_email: String,
    /// Serve the benchmarks' no-op endpoint.
    pub bench_endpoints: bool,
    /// The connection deadlines: longest a connection may take to send a request's headers
    /// (counted from when it opened or its previous response went out, so also how long an
    /// idle connection stays open), pause within a body, or leave an answer unread. Idle
    /// and stalled (slowloris) clients must not hold sockets forever.
    pub header_timeout: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./sori-data"),
            database_url: None,
            listen: "127.0.0.1:8080".into(),
            log_format: LogFormat::Text,
            rate_limit: 1000,
            rate_burst: 2000,
            max_body_bytes: 256 * 1024,
            cookie_secure: false,
            writer_shards: None,
            pg_max_connections: 16,
            owner_email: "owner@sori.local".into(),
            bench_endpoints: false,
            header_timeout: std::time::Duration::from_secs(30),
        }
    }
}

impl Config {
    /// Merges defaults, the TOML file and the flags/environment (`serve` holds the serve
    /// command's own flags; the other commands pass the default).
    pub fn load(args: &ConfigArgs, serve: &ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let d = Config::default();
        let listen = serve.listen.clone().or(file.listen).unwrap_or(d.listen);
        listen.parse::<SocketAddr>().with_context(|| {
            format!("listen address `{listen}` is not host:port (e.g. 127.0.0.1:8080)")
        })?;
        // Values that would start a server unable to do its work (every body refused,
        // no writer, no connection) are refused at start instead.
        if let Some(n) = file.max_body_bytes
            && n < 1024
        {
            anyhow::bail!("max_body_bytes = {n}: must be at least 1024");
        }
        if args.writer_shards.or(file.writer_shards) == Some(0) {
            anyhow::bail!("writer shards (--writer-shards, writer_shards) must be at least 1");
        }
        // A bucket of 0 would hold no request: every call refused, or (as it was read)
        // silently one.
        if serve.rate_burst.or(file.rate_burst) == Some(0) {
            anyhow::bail!("rate burst (--rate-burst, rate_burst) must be at least 1");
        }
        if file.pg_max_connections == Some(0) {
            anyhow::bail!("pg_max_connections = 0: must be at least 1");
        }
        // Bounded above too: a deadline past the clock's range would overflow on every
        // connection.
        if let Some(n) = file.header_timeout_secs
            && !(1..=MAX_HEADER_TIMEOUT_SECS).contains(&n)
        {
            anyhow::bail!(
                "header_timeout_secs = {n}: must be from 1 to {MAX_HEADER_TIMEOUT_SECS} (one day)"
            );
        }
        Ok(Self {
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or(d.data_dir),
            database_url: args.database_url.clone().or(file.database_url),
            listen,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            rate_limit: serve.rate_limit.or(file.rate_limit).unwrap_or(d.rate_limit),
            rate_burst: serve.rate_burst.or(file.rate_burst).unwrap_or(d.rate_burst),
            max_body_bytes: file.max_body_bytes.unwrap_or(d.max_body_bytes),
            cookie_secure: file.cookie_secure.unwrap_or(d.cookie_secure),
            writer_shards: args.writer_shards.or(file.writer_shards),
            pg_max_connections: file.pg_max_connections.unwrap_or(d.pg_max_connections),
            owner_email: file.owner_email.unwrap_or(d.owner_email),
            bench_endpoints: serve.bench_endpoints,
            header_timeout: file
                .header_timeout_secs
                .map_or(d.header_timeout, std::time::Duration::from_secs),
        })
    }

    /// The effective database URL.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("sori.db").display()))
    }

    /// HTTP settings.
    pub fn http(&self) -> sori_http::HttpConfig {
        sori_http::HttpConfig {
            max_body_bytes: self.max_body_bytes,
            max_ingest_body_bytes: self.max_body_bytes.max(1024 * 1024),
            rate_limit_per_second: self.rate_limit,
            rate_limit_burst: self.rate_burst,
            cookie_secure: self.cookie_secure,
            noop_endpoint: self.bench_endpoints,
        }
    }
}

fn read_file(p: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

/// Hides the password of a database URL in messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("sori.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.1:9000\"\nrate_limit = 5\nheader_timeout_secs = 7\n",
        )
        .expect("write");
        let args = ConfigArgs {
            config: Some(f.clone()),
            ..Default::default()
        };
        let c = Config::load(&args, &ServeArgs::default()).expect("load");
        assert_eq!(c.listen, "127.0.0.1:9000");
        assert_eq!(c.rate_limit, 5);
        assert_eq!(c.header_timeout, std::time::Duration::from_secs(7));
        let args = ConfigArgs {
            config: Some(f),
            ..Default::default()
        };
        let serve = ServeArgs {
            rate_limit: Some(7),
            ..Default::default()
        };
        assert_eq!(Config::load(&args, &serve).expect("load").rate_limit, 7);
        assert!(
            !Config::load(&args, &serve)
                .expect("load")
                .http()
                .noop_endpoint
        );
        let serve = ServeArgs {
            bench_endpoints: true,
            ..Default::default()
        };
        assert!(
            Config::load(&ConfigArgs::default(), &serve)
                .expect("load")
                .http()
                .noop_endpoint
        );
        std::fs::write(dir.path().join("bad.toml"), "nope = 1").expect("write");
        let args = ConfigArgs {
            config: Some(dir.path().join("bad.toml")),
            ..Default::default()
        };
        assert!(Config::load(&args, &ServeArgs::default()).is_err());
        for bad in [
            "max_body_bytes = 0",
            "writer_shards = 0",
            "rate_burst = 0",
            "pg_max_connections = 0",
            "header_timeout_secs = 0",
            "header_timeout_secs = 86401",
            "header_timeout_secs = 9223372036854775807",
        ] {
            std::fs::write(dir.path().join("zero.toml"), bad).expect("write");
            let args = ConfigArgs {
                config: Some(dir.path().join("zero.toml")),
                ..Default::default()
            };
            assert!(Config::load(&args, &ServeArgs::default()).is_err(), "{bad}");
        }
    }
}
