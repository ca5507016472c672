//! The `modgate` command: a thin CLI over the library.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use modgate::config::{self, Config};
use modgate::proxy::ca::CertAuthority;
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
        /// A module path (e.g. golang.org/x/mod) or a URL (https://proxy.golang.org/...).
        input: String,
        #[arg(long, short, env = "MODGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Module-cache commands (safe beside a running gateway).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
        #[arg(long, short, env = "MODGATE_CONFIG", global = true)]
        config: Option<PathBuf>,
    },
    /// Proxy-authentication helpers.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
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
    /// Read a password on standard input and print its hash for [[auth.users]].
    Hash,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => config::load(p)?,
        None => Config::default(),
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config_path = config.clone();
            let config = load_config(config.as_ref())?;
            modgate::telemetry::init_logging(&config.log);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let stop = modgate::shutdown_signal()?;
                let gateway = Gateway::start_with_path(config, config_path).await?;
                // The banner goes to stdout; a closed stdout must not stop the gateway.
                let mut banner = String::new();
                if gateway.created_ca() {
                    banner.push_str(&format!(
                        "modgate: created a new CA in {}\n",
                        gateway.state().ca.cert_path().display()
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
                config::load(&file)?;
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
                        modgate::policy::Policy::new(&cfg)
                            .and_then(|p| p.ca_name_constraints())
                            .map_err(anyhow::Error::msg)?,
                    )
                } else {
                    None
                };
                let ca = CertAuthority::init_constrained(&dir, constraints.as_deref())?;
                println!("created CA {}", ca.cert_path().display());
                println!("SHA-256 fingerprint: {}", ca.fingerprint());
                Ok(())
            }
            CaCommand::Show { dir, config } => {
                let cfg = load_config(config.as_ref())?;
                let dir = dir.unwrap_or(cfg.ca.dir.clone());
                let ca = CertAuthority::load(&dir)?;
                let path = std::path::absolute(ca.cert_path())?;
                println!("path: {}", path.display());
                println!("SHA-256 fingerprint: {}", ca.fingerprint());
                println!("{}", ca.cert_pem().trim_end());
                println!("Agent set-up:");
                print!(
                    "{}",
                    agent_env_lines(&format!("http://{}", cfg.proxy.listen), &path)
                );
                Ok(())
            }
        },
        Command::Cache { command, config } => {
            let cfg = load_config(config.as_ref())?;
            match command {
                CacheCommand::Stats => print!("{}", modgate::ops::stats(&cfg)?),
                CacheCommand::Gc => print!("{}", modgate::ops::gc(&cfg)?),
                CacheCommand::Verify => {
                    let report = modgate::ops::verify(&cfg)?;
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
        Command::Explain { input, config } => {
            let cfg = load_config(config.as_ref())?;
            print!(
                "{}",
                modgate::explain::explain(&cfg, &input).map_err(anyhow::Error::msg)?
            );
            Ok(())
        }
        Command::Auth {
            command: AuthCommand::Hash,
        } => {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input)?;
            let password = input.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "empty password on standard input");
            println!("{}", modgate::proxy::auth::hash_password(password));
            Ok(())
        }
    }
}
