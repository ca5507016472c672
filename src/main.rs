//! The `modgate` command: a thin CLI over the library.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use modgate::config::{self, Config};
use modgate::tls::ca::CertAuthority;
use modgate::{Gateway, agent_env_lines};

#[derive(Parser, Debug)]
#[command(
    name = "modgate",
    version,
    about = "A forward HTTPS proxy for Go module traffic"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (defaults: proxy 127.0.0.1:3128, admin 127.0.0.1:9090).
    Serve {
        /// TOML configuration file; without one, built-in defaults apply.
        #[arg(long, short, env = "MODGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Certificate-authority helpers.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Show how a module path or URL would be classified, routed and cached.
    Explain {
        /// A module path (e.g. golang.org/x/mod), module@version (also shows the module
        /// firewall's decision) or a URL (https://proxy.golang.org/...).
        input: String,
        #[arg(long, short, env = "MODGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Decide as this proxy user (for per-group firewall rules).
        #[arg(long = "as", value_name = "USER")]
        as_user: Option<String>,
        /// Decide as a client at this address (for per-group firewall rules).
        #[arg(long = "from", value_name = "ADDR")]
        from: Option<std::net::IpAddr>,
    },
    /// Module-firewall commands.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Module-cache commands (safe beside a running gateway).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
        #[arg(long, short, env = "MODGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
    },
    /// Pre-load a running gateway's cache from a go.sum, a go.mod or a list of module@version
    /// lines, verifying public modules against the checksum database.
    Warm {
        /// go.sum (preferred: it lists every module a build needs), go.mod, or module@version lines.
        file: PathBuf,
        /// The gateway's proxy address, host:port (default: proxy.listen of the config). With
        /// proxy users: http://USER@HOST:PORT, the password in MODGATE_PROXY_PASSWORD or typed
        /// at the prompt (or http://USER:PASSWORD@HOST:PORT).
        #[arg(long)]
        proxy: Option<String>,
        /// The gateway's CA certificate (default: ca.pem in ca.dir of the config).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The GOPROXY host the gateway serves.
        #[arg(long, default_value = "proxy.golang.org")]
        goproxy_host: String,
        /// Checksum database as in GOSUMDB: a verifier key, a known name, or "off".
        #[arg(long, env = "GOSUMDB", default_value = "sum.golang.org")]
        sumdb: String,
        /// Module path patterns not checked against the database (as GONOSUMDB; the config's
        /// private patterns are always skipped).
        #[arg(long, env = "GONOSUMDB", default_value = "")]
        nosumdb: String,
        /// Module versions fetched at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, short, env = "MODGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Proxy-authentication helpers.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// The pins of private versions (safe beside a running gateway).
    Integrity {
        #[command(subcommand)]
        command: IntegrityCommand,
        #[arg(long, short, env = "MODGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
    },
}

/// `modgate policy ...`
#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Check every module version of a go.sum against the module firewall, offline (facts from
    /// the local cache). Exit code 0: all allowed; 1: some refused; 3: some could not be decided
    /// from the cache; 2: an error.
    Check {
        /// The go.sum to check.
        go_sum: PathBuf,
        #[arg(long, short, env = "MODGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Decide as this proxy user.
        #[arg(long = "as", value_name = "USER")]
        as_user: Option<String>,
        /// Decide as a client at this address.
        #[arg(long = "from", value_name = "ADDR")]
        from: Option<std::net::IpAddr>,
        /// List allowed versions too.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand, Debug)]
enum IntegrityCommand {
    /// Accept new content for a private version whose tag moved: its pins are dropped (logged
    /// with who and why) and its cached files removed, so the next fetch pins what git has now.
    Repin {
        /// module@version
        target: String,
        /// Why the change is intended (kept in the pin log).
        #[arg(long)]
        reason: String,
    },
    /// Print the pins of a private version.
    Show {
        /// module@version
        target: String,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print a fully commented configuration file with every key at its default.
    Example,
    /// Validate a configuration file; on error, name the offending key.
    Check { file: PathBuf },
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create a new CA (fails if one exists).
    Init {
        /// CA directory (default: ca.dir of the config, else ./certs).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, short, env = "MODGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the CA's path, SHA-256 fingerprint, PEM and the agent environment lines.
    Show {
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, short, env = "MODGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum CacheCommand {
    /// Entries, bytes, oldest entry, and the running gateway's hit ratio since it started.
    Stats,
    /// Apply cache.max_size now, evicting the oldest entries.
    Gc,
    /// Re-check zips, go.mod and .info entries (x/mod rules, cached checksum-DB records); drop corrupt ones.
    Verify,
}

#[derive(Subcommand, Debug)]
enum AuthCommand {
    /// Print a password's hash for [[auth.users]]: typed at a hidden prompt (twice), or read
    /// from standard input.
    Hash,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Not for serve and warm: their sockets (TLS writes use writev, which raises SIGPIPE) must
    // see EPIPE as an error, not end the process.
    if !matches!(cli.command, Command::Serve { .. } | Command::Warm { .. }) {
        // A command's output piped into `head` ends quietly when the reader goes, as other
        // command-line tools do (the gateway itself keeps ignoring SIGPIPE).
        // SAFETY: set once at start, before any thread exists.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    // `policy check` keeps 1 for "refused": its errors exit with 2.
    let failure = if matches!(cli.command, Command::Policy { .. }) {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modgate: {}", error_text(&e));
            failure
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn warm(
    cfg: &Config,
    file: &std::path::Path,
    proxy: Option<String>,
    ca: Option<PathBuf>,
    goproxy_host: String,
    sumdb: &str,
    nosumdb: &str,
    concurrency: usize,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use modgate::cli::warm;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let wants = warm::parse_input(&file.display().to_string(), &text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let (proxy, proxy_auth) = match proxy {
        Some(p) => {
            let arg = warm::ProxyArg::parse(&p)?;
            let addr = std::net::ToSocketAddrs::to_socket_addrs(arg.addr.as_str())
                .with_context(|| format!("--proxy {}: not a host:port", arg.addr))?
                .next()
                .with_context(|| format!("--proxy {}: no address", arg.addr))?;
            let auth = match (&arg.user, &arg.password) {
                (None, _) => None,
                (Some(user), Some(password)) => Some(warm::basic_auth(user, password)),
                (Some(user), None) => {
                    let password = match std::env::var("MODGATE_PROXY_PASSWORD") {
                        Ok(p) => p,
                        Err(_) if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
                            rpassword::prompt_password(format!("Proxy password for {user}: "))?
                        }
                        Err(_) => anyhow::bail!(
                            "--proxy names the user {user} but no password: set MODGATE_PROXY_PASSWORD (or run in a terminal to be asked)"
                        ),
                    };
                    Some(warm::basic_auth(user, &password))
                }
            };
            (addr, auth)
        }
        None => (cfg.proxy.listen, None),
    };
    let ca = ca.unwrap_or_else(|| cfg.ca.dir.join("ca.pem"));
    let pem = std::fs::read(&ca).with_context(|| {
        format!(
            "cannot read the gateway CA {} (use --ca, or fetch it from http://ADMIN/ca.pem)",
            ca.display()
        )
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots
            .add(cert.with_context(|| format!("{}: bad PEM", ca.display()))?)
            .with_context(|| format!("{}: bad certificate", ca.display()))?;
    }
    let sumdb = match sumdb {
        "off" => None,
        "sum.golang.org" | "sum.golang.google.cn" | "" => {
            Some(warm::VerifierKey::parse(warm::SUM_GOLANG_ORG_KEY).map_err(anyhow::Error::msg)?)
        }
        key => Some(
            warm::VerifierKey::parse(key.split_whitespace().next().unwrap_or(key))
                .map_err(anyhow::Error::msg)?,
        ),
    };
    let policy = modgate::gateway::compile::policy(cfg)?;
    let mut skip: Vec<String> = nosumdb
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    skip.extend(
        policy
            .rules
            .private
            .joined()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    );
    let nosumdb = modgate_core::policy::patterns::Patterns::parse(skip.iter().map(String::as_str))
        .map_err(|e| anyhow::anyhow!("--nosumdb: {e}"))?;
    let opts = warm::Options {
        proxy,
        proxy_auth,
        roots: std::sync::Arc::new(roots),
        goproxy_host,
        sumdb,
        nosumdb,
        concurrency,
    };
    let total = wants.len() as u64;
    let progress = indicatif::ProgressBar::new(total);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{bar:30}] {pos}/{len} {elapsed} {wide_msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Runtime::new()?;
    let outcomes = rt.block_on(warm::run(opts, wants, progress));
    let summary = warm::summary(&outcomes, started.elapsed());
    print!("{summary}");
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    anyhow::ensure!(failed == 0, "{failed} module versions could not be warmed");
    Ok(())
}

/// The error and its causes, each once: a cause whose text the message already carries (an
/// error that prints its source) is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => config::load(p)?,
        None => config::from_env()?,
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config_path = config.clone();
            let config = load_config(config.as_ref())?;
            let _telemetry = modgate::telemetry::init(&config.log, &config.traces)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let stop = modgate::shutdown_signal()?;
                let gateway = Gateway::start_with_path(config, config_path).await?;
                tokio::spawn(return_memory(
                    gateway.runtime().ingress.serve.metrics.clone(),
                ));
                // The banner goes to stdout; a closed stdout must not stop the gateway.
                let mut banner = String::new();
                if gateway.created_ca() {
                    banner.push_str(&format!(
                        "modgate: created a new CA in {}\n",
                        gateway.ca().cert_path().display()
                    ));
                }
                if let Some(addr) = gateway.transparent_addr() {
                    banner.push_str(&format!(
                        "modgate: gateway mode on {addr} (redirect client port 443/80 traffic here)\n"
                    ));
                }
                banner.push_str(&format!(
                    "modgate: proxy on {}, admin on http://{} (/metrics /healthz /readyz /ca.pem)\nAgent set-up:\n{}",
                    gateway.proxy_addr(),
                    gateway.admin_addr(),
                    gateway.agent_env()
                ));
                let mut out = std::io::stdout().lock();
                let _ = std::io::Write::write_all(&mut out, banner.as_bytes());
                let _ = std::io::Write::flush(&mut out);
                drop(out);
                gateway.run_until(stop).await;
                Ok(())
            })
        }
        Command::Config { command } => match command {
            ConfigCommand::Example => {
                print!("{}", config::EXAMPLE);
                Ok(())
            }
            ConfigCommand::Check { file } => {
                let cfg = config::load(&file)?;
                modgate::gateway::compile::check(&cfg)?;
                println!("{}: ok", file.display());
                Ok(())
            }
        },
        Command::Ca { command } => match command {
            CaCommand::Init { dir, config } => {
                let cfg = load_config(config.as_ref())?;
                let dir = dir.unwrap_or(cfg.ca.dir.clone());
                let constraints = if cfg.ca.name_constraints {
                    Some(
                        modgate::gateway::compile::policy(&cfg)?
                            .ca_name_constraints()
                            .map_err(|e| anyhow::anyhow!("ca.name_constraints: {e}"))?,
                    )
                } else {
                    None
                };
                let ca = CertAuthority::init_constrained(&dir, constraints.as_deref())?;
                println!("created CA {}", ca.cert_path().display());
                println!("SHA-256 fingerprint: {}", ca.fingerprint());
                if let Some(name) = modgate::gateway::compile::own_sumdb(&cfg)? {
                    let (signer, _) = modgate::tls::sumdb_key::load_or_create(&dir, name)?;
                    println!("checksum-database key: {}", signer.vkey());
                }
                Ok(())
            }
            CaCommand::Show { dir, config } => {
                let cfg = load_config(config.as_ref())?;
                let dir = dir.unwrap_or(cfg.ca.dir.clone());
                let ca = CertAuthority::load(&dir)?;
                let path = std::path::absolute(ca.cert_path())?;
                println!("path: {}", path.display());
                println!("subject: {}", ca.subject());
                let expires = ca.not_after();
                let left = expires - time::OffsetDateTime::now_utc();
                println!(
                    "expires: {} ({} days from now)",
                    expires
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    left.whole_days()
                );
                println!("SHA-256 fingerprint: {}", ca.fingerprint());
                println!("{}", ca.cert_pem().trim_end());
                let gosumdb = match cfg.sumdb.serve.as_str() {
                    "" => None,
                    name if modgate::tls::sumdb_key::path(&dir).exists() => Some(
                        modgate::tls::sumdb_key::load_or_create(&dir, name)?
                            .0
                            .vkey(),
                    ),
                    name => {
                        println!(
                            "checksum database {name}: no signing key yet in {} (`modgate ca init` or the first `modgate serve` creates it)",
                            dir.display()
                        );
                        None
                    }
                };
                if let Some(vkey) = &gosumdb {
                    println!("checksum database: {vkey}");
                }
                println!("Agent set-up:");
                print!(
                    "{}",
                    agent_env_lines(
                        &format!("http://{}", cfg.proxy.listen),
                        &path,
                        gosumdb.as_deref()
                    )
                );
                Ok(())
            }
        },
        Command::Integrity { command, config } => {
            let cfg = load_config(config.as_ref())?;
            match command {
                IntegrityCommand::Repin { target, reason } => {
                    print!("{}", modgate::cli::ops::repin(&cfg, &target, &reason)?)
                }
                IntegrityCommand::Show { target } => {
                    print!("{}", modgate::cli::ops::show_pins(&cfg, &target)?)
                }
            }
            Ok(())
        }
        Command::Cache { command, config } => {
            let cfg = load_config(config.as_ref())?;
            match command {
                CacheCommand::Stats => print!("{}", modgate::cli::ops::stats(&cfg)?),
                CacheCommand::Gc => print!("{}", modgate::cli::ops::gc(&cfg)?),
                CacheCommand::Verify => {
                    let report = modgate::cli::ops::verify(&cfg)?;
                    for (key, reason) in &report.corrupt {
                        println!("removed {key}: {reason}");
                    }
                    println!(
                        "checked {} entries; {} corrupt entries removed",
                        report.checked,
                        report.corrupt.len()
                    );
                    anyhow::ensure!(
                        report.corrupt.is_empty(),
                        "corrupt entries were found and removed"
                    );
                }
            }
            Ok(())
        }
        Command::Warm {
            file,
            proxy,
            ca,
            goproxy_host,
            sumdb,
            nosumdb,
            concurrency,
            config,
        } => {
            let cfg = load_config(config.as_ref())?;
            warm(
                &cfg,
                &file,
                proxy,
                ca,
                goproxy_host,
                &sumdb,
                &nosumdb,
                concurrency,
            )
        }
        Command::Explain {
            input,
            config,
            as_user,
            from,
        } => {
            let cfg = load_config(config.as_ref())?;
            let who = modgate::cli::policy::Who::new(as_user, from);
            print!(
                "{}",
                modgate::cli::explain::explain_for(&cfg, &input, &who)?
            );
            Ok(())
        }
        Command::Policy {
            command:
                PolicyCommand::Check {
                    go_sum,
                    config,
                    as_user,
                    from,
                    all,
                },
        } => {
            let cfg = load_config(config.as_ref())?;
            let who = modgate::cli::policy::Who::new(as_user, from);
            let (table, code) = modgate::cli::policy::check(&cfg, &go_sum, &who, all)?;
            print!("{table}");
            std::io::Write::flush(&mut std::io::stdout())?;
            std::process::exit(code);
        }
        Command::Auth {
            command: AuthCommand::Hash,
        } => {
            // Typed at a terminal: hidden, and asked twice. Otherwise read from standard input.
            let password = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                let first = rpassword::prompt_password("Password: ")?;
                let again = rpassword::prompt_password("Again: ")?;
                anyhow::ensure!(first == again, "the passwords differ; nothing printed");
                first
            } else {
                let mut input = String::new();
                std::io::stdin().read_to_string(&mut input)?;
                input.trim_end_matches(['\r', '\n']).to_string()
            };
            anyhow::ensure!(!password.is_empty(), "empty password");
            println!("{}", modgate::ingress::auth::hash_password(&password));
            Ok(())
        }
    }
}

/// Gives memory back to the system after a wave of connections has closed: glibc keeps what
/// thousands of closed connections freed in its arenas (an RSS that never falls after a burst
/// of tunnels); `malloc_trim` returns the free pages. Checked every 5 s, trimming only when the
/// open connections fell by more than 256 since the last peak, so a steady load costs nothing.
async fn return_memory(metrics: std::sync::Arc<modgate::telemetry::metrics::Metrics>) {
    let mut peak = 0i64;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        let open = metrics.open_connections();
        if open + 256 < peak {
            // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
            peak = open;
        } else {
            peak = peak.max(open);
        }
    }
}
