//! `sori`: serve, migrate and manage channels.

use clap::{Parser, Subcommand};

/// mimalloc: request handling allocates many small short-lived objects; glibc malloc
/// spent a quarter of the server's CPU on them under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use sori::config::{Config, ConfigArgs, LogFormat, ServeArgs};
use sori::transfer::{Format, Kind};
use sori_app::ChannelSpec;
use std::path::PathBuf;

/// Sori, a self-hosted customer-messaging CRM.
#[derive(Debug, Parser)]
#[command(name = "sori", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server and background workers.
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Manage channels.
    Channel {
        #[command(subcommand)]
        command: ChannelCommand,
    },
    /// Import users, events or profile field definitions from a CSV (header row) or NDJSON
    /// file. Bad lines are reported with their numbers and skipped; re-running a file
    /// duplicates nothing.
    Import {
        /// What the file holds.
        #[arg(value_enum)]
        kind: Kind,
        /// The file.
        file: PathBuf,
        /// Channel id (needed when the store has several).
        #[arg(long)]
        channel: Option<i64>,
        /// File format (default: by extension, `.csv` or NDJSON).
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Export every user, event or profile field definition of a channel as NDJSON or CSV.
    Export {
        /// What to export.
        #[arg(value_enum)]
        kind: Kind,
        /// Channel id (needed when the store has several).
        #[arg(long)]
        channel: Option<i64>,
        /// Output format.
        #[arg(long, value_enum, default_value = "ndjson")]
        format: Format,
        /// Output file (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Only the users of this saved segment (users only).
        #[arg(long)]
        segment: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ChannelCommand {
    /// Create a channel with an owner account and print its credentials once.
    Create {
        /// Business name.
        #[arg(long)]
        name: String,
        /// Owner login e-mail [default: the configuration's `owner_email`,
        /// owner@sori.local unless set].
        #[arg(long, env = "SORI_OWNER_EMAIL")]
        owner_email: Option<String>,
        /// Owner password (generated when omitted).
        #[arg(long, env = "SORI_OWNER_PASSWORD")]
        owner_password: Option<String>,
        /// IANA time zone.
        #[arg(long, default_value = "Asia/Seoul")]
        time_zone: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the store's channels with their ids, names and public keys (the plugin key and
    /// the access key; secrets are kept hashed and are never shown again).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Give a channel a new Open API secret and write key (for a leaked or lost one) and
    /// print them once. The plugin key and the member-hash secret stay. Running servers
    /// stop taking the old ones within 5 s.
    RotateKeys {
        /// Channel id (needed when the store has several).
        #[arg(long)]
        channel: Option<i64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set a manager's password (for a locked-out owner) and end their sessions; prints
    /// the new password once.
    ResetPassword {
        /// Channel id (needed when the store has several).
        #[arg(long)]
        channel: Option<i64>,
        /// The manager's login e-mail.
        #[arg(long)]
        email: String,
        /// The new password (generated when omitted).
        #[arg(long, env = "SORI_NEW_PASSWORD")]
        password: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a channel's settings (the Open API's `PATCH /open/v5/channel` does the same
    /// on a running server). Raise the event retention before importing older history.
    Set {
        /// Channel id (needed when the store has several).
        #[arg(long)]
        channel: Option<i64>,
        /// Days events are kept (1–3650); events older than this are refused on the way
        /// in and deleted by the retention job.
        #[arg(long)]
        event_retention_days: Option<i64>,
    },
}

/// A serve-only flag in the wrong place: before `serve` (`sori --listen X serve`, the order
/// these flags took until they moved to `serve`), or given to another command (named as
/// the second value). Named with the fix, where clap would only call it unexpected.
fn serve_flag_before_serve(args: impl Iterator<Item = String>) -> Option<(String, Option<String>)> {
    const SERVE_ONLY: [&str; 4] = [
        "--listen",
        "--rate-limit",
        "--rate-burst",
        "--bench-endpoints",
    ];
    const COMMANDS: [&str; 5] = ["serve", "migrate", "channel", "import", "export"];
    let args: Vec<String> = args.collect();
    let command = args.iter().position(|a| COMMANDS.contains(&a.as_str()));
    let flag = |a: &String| {
        let flag = a.split('=').next().unwrap_or(a);
        SERVE_ONLY.contains(&flag).then(|| flag.to_owned())
    };
    match command {
        Some(i) if args[i] == "serve" => args[..i].iter().find_map(flag).map(|f| (f, None)),
        Some(i) => args
            .iter()
            .find_map(flag)
            .map(|f| (f, Some(args[i].clone()))),
        None => None,
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: in a log file or a journal they are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Writes a line to standard output; a closed output (`sori import … | true`) is an error
/// to report, not a panic (`println!` panics).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

fn print_credentials(c: &sori_app::ChannelCredentials) -> std::io::Result<()> {
    say!(
        "Channel {} created. These secrets are shown only now:",
        c.channel_id
    )?;
    say!("  pluginKey        {}", c.plugin_key)?;
    say!("  accessKey        {}", c.access_key)?;
    say!("  accessSecret     {}", c.access_secret)?;
    say!("  writeKey         {}", c.write_key)?;
    say!("  memberHashSecret {}", c.member_hash_secret)?;
    say!(
        "  owner login      {} / {}",
        c.owner.email,
        c.owner.password
    )
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if let Some((flag, command)) = serve_flag_before_serve(std::env::args().skip(1)) {
        match command {
            Some(c) => eprintln!("error: {flag} belongs to `sori serve`, not `sori {c}`"),
            None => {
                eprintln!("error: {flag} belongs to `serve` and goes after it: sori serve {flag} …")
            }
        }
        return std::process::ExitCode::from(2);
    }
    let cli = Cli::parse();
    let serve = match &cli.command {
        Command::Serve(serve) => serve.clone(),
        _ => ServeArgs::default(),
    };
    let cfg = match Config::load(&cli.config, &serve) {
        Ok(cfg) => cfg,
        // The file could not be read: the format the flag or environment asks for.
        Err(e) => {
            let format = cli.config.log_format.unwrap_or_default();
            init_logs(format);
            return fail(format, e);
        }
    };
    let format = cfg.log_format;
    init_logs(format);
    match run(cli, cfg).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(format, e),
    }
}

/// Reports a fatal error. A log collector reading JSON lines gets it as one of them.
fn fail(format: LogFormat, e: anyhow::Error) -> std::process::ExitCode {
    match format {
        LogFormat::Json => tracing::error!(error = format!("{e:#}"), "sori stopped"),
        LogFormat::Text => eprintln!("Error: {e:?}"),
    }
    std::process::ExitCode::FAILURE
}

/// The services over an existing store, and the channel a command names (or the only
/// one); `audience` builds the audience projections.
async fn channel_app(
    cfg: &Config,
    channel: Option<i64>,
    audience: bool,
) -> anyhow::Result<(sori_app::App, sori_app::auth::ChannelInfo)> {
    let store = sori::open_existing_store(cfg).await?;
    let app = sori::app_with(cfg, store, audience).await?;
    let ch = sori::transfer::channel(&app, channel).await?;
    Ok((app, ch))
}

async fn run(cli: Cli, cfg: Config) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(_) => {
            let mut running = sori::start(&cfg).await?;
            if let Some(c) = &running.first_channel {
                print_credentials(c)?;
            }
            running.shutdown_on_signal()?;
            tracing::info!(addr = %running.addr, store = running.app.store.backend(), "sori is serving");
            say!("Sori is listening on http://{}", running.addr)?;
            running.wait().await?;
        }
        Command::Migrate => {
            let store = sori::open_store(&cfg).await?;
            say!("migrations applied ({})", store.backend())?;
        }
        Command::Channel {
            command:
                ChannelCommand::Create {
                    name,
                    owner_email,
                    owner_password,
                    time_zone,
                    json,
                },
        } => {
            let store = sori::open_store(&cfg).await?;
            let app = sori::app_with(&cfg, store, false).await?;
            let spec = ChannelSpec {
                name,
                owner_email: owner_email.unwrap_or_else(|| cfg.owner_email.clone()),
                owner_password,
                time_zone: Some(time_zone),
            };
            let creds = sori::create_channel(&app, spec).await?;
            if json {
                say!("{}", serde_json::to_string_pretty(&creds)?)?;
            } else {
                print_credentials(&creds)?;
            }
        }
        Command::Channel {
            command: ChannelCommand::List { json },
        } => {
            let store = sori::open_existing_store(&cfg).await?;
            let channels =
                sori::transfer::channels(&sori::app_with(&cfg, store, false).await?).await?;
            if json {
                let list: Vec<_> = channels
                    .iter()
                    .map(|c| {
                        serde_json::json!({"id": c.id, "name": c.name, "timeZone": c.time_zone,
                            "pluginKey": c.plugin_key, "accessKey": c.access_key,
                            "createdAt": c.created_at})
                    })
                    .collect();
                say!("{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                for c in &channels {
                    say!(
                        "{}\t{}\t{}\tpluginKey {}\taccessKey {}",
                        c.id,
                        c.name,
                        c.time_zone,
                        c.plugin_key,
                        c.access_key
                    )?;
                }
            }
        }
        Command::Channel {
            command: ChannelCommand::RotateKeys { channel, json },
        } => {
            let (app, ch) = channel_app(&cfg, channel, false).await?;
            let keys = app
                .rotate_keys(ch.channel.id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("channel {} is gone", ch.channel.id))?;
            if json {
                say!("{}", serde_json::to_string_pretty(&keys)?)?;
            } else {
                say!(
                    "Channel {}: new secrets, shown only now (the old ones stop working):",
                    keys.channel_id
                )?;
                say!("  accessKey        {}", keys.access_key)?;
                say!("  accessSecret     {}", keys.access_secret)?;
                say!("  writeKey         {}", keys.write_key)?;
            }
        }
        Command::Channel {
            command:
                ChannelCommand::ResetPassword {
                    channel,
                    email,
                    password,
                    json,
                },
        } => {
            let (app, ch) = channel_app(&cfg, channel, false).await?;
            // A password the operator chose is not printed back.
            let generated = password.is_none();
            let login = app
                .reset_password(ch.channel.id, &email, password)
                .await?
                .ok_or_else(|| {
                    anyhow::anyhow!("channel {} has no manager `{email}`", ch.channel.id)
                })?;
            match (json, generated) {
                (true, true) => say!("{}", serde_json::to_string_pretty(&login)?)?,
                (true, false) => say!("{}", serde_json::json!({"email": login.email}))?,
                (false, true) => say!(
                    "{}: new password {} (their sessions are ended)",
                    login.email,
                    login.password
                )?,
                (false, false) => say!("{}: password set (their sessions are ended)", login.email)?,
            }
        }
        Command::Channel {
            command:
                ChannelCommand::Set {
                    channel,
                    event_retention_days,
                },
        } => {
            let (app, ch) = channel_app(&cfg, channel, false).await?;
            // Checked here too, to name the flag rather than the API's field.
            if let Some(d) = event_retention_days {
                sori_domain::event::check_retention_days("--event-retention-days", d)?;
            }
            let patch = sori_store::ChannelSettingsPatch {
                event_retention_days,
                ..Default::default()
            };
            let updated = app
                .update_channel(ch.channel.id, patch)
                .await?
                .ok_or_else(|| anyhow::anyhow!("channel {} is gone", ch.channel.id))?;
            say!(
                "channel {}: events kept {} days",
                updated.id,
                updated.event_retention_days
            )?;
        }
        Command::Import {
            kind,
            file,
            channel,
            format,
        } => {
            let (app, ch) = channel_app(&cfg, channel, false).await?;
            let format = format.unwrap_or_else(|| Format::of(&file));
            let started = std::time::Instant::now();
            let s = sori::transfer::import(&app, &ch, kind, &file, format, &mut std::io::stderr())
                .await?;
            let already = match kind {
                Kind::Users => String::new(),
                Kind::Events => format!(" ({} already stored)", s.already),
                Kind::Fields => format!(" ({} unchanged)", s.already),
            };
            say!(
                "imported {} {}{already}, skipped {} bad lines, in {:.1} s",
                s.imported,
                match kind {
                    Kind::Users => "users",
                    Kind::Events => "events",
                    Kind::Fields => "fields",
                },
                s.skipped,
                started.elapsed().as_secs_f64()
            )?;
        }
        Command::Export {
            kind,
            channel,
            format,
            output,
            segment,
        } => {
            if segment.is_some() && kind != sori::transfer::Kind::Users {
                anyhow::bail!("--segment applies to `export users` only");
            }
            let (app, ch) = channel_app(&cfg, channel, segment.is_some()).await?;
            let n = match output {
                Some(path) => {
                    // Installed before the file exists, so no signal finds it unhandled.
                    let stop = sori::stop_signal()?;
                    let mut file = sori::transfer::ExportFile::create(&path)?;
                    let done = tokio::select! {
                        done = sori::transfer::export(
                            &app, &ch, kind, format, segment.as_deref(), file.writer(),
                        ) => done,
                        () = stop => Err(anyhow::anyhow!(
                            "export interrupted; nothing written to {}", path.display()
                        )),
                    };
                    match done {
                        Ok(n) => {
                            file.finish()?;
                            n
                        }
                        Err(e) => {
                            file.abandon();
                            return Err(e);
                        }
                    }
                }
                None => {
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    sori::transfer::export(&app, &ch, kind, format, segment.as_deref(), &mut out)
                        .await?
                }
            };
            eprintln!("exported {n} rows");
        }
    }
    Ok(())
}
