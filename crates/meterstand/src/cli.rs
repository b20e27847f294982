//! The command line: clap definitions and the dispatch to the service, the clients and the
//! key and config tools. Exit codes: 0 ok, 1 error, 2 an import with refused rows.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meterstand_pseudonym::KeyRing;

use crate::config::Config;
use crate::{audit, backup, client, config, demo, service, simulate};

#[derive(Debug, Parser)]
#[command(name = "meterstand", version, about = "Private-by-construction smart-meter reading store", long_about = None)]
struct Cli {
    /// Configuration file overriding config/default.toml (METERSTAND__SECTION__KEY variables override both).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: MQTT ingest, store, retention schedule and the HTTP server.
    Run,
    /// Everything in one process: embedded broker, simulated meters and the service; prints
    /// what was ingested, dropped and rejected, a sample aggregate, and where to look.
    Demo(demo::DemoArgs),
    /// Publish realistic readings for N simulated connections to a broker.
    Simulate(simulate::SimulateArgs),
    /// Create a master key file (mode 0600), or add a new key version to one with --rotate.
    Keygen {
        /// Where to write the key file; keep it outside the data directory.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Add a new key version to an existing file instead of creating one.
        #[arg(long)]
        rotate: bool,
    },
    /// API tokens: `token new` makes one and prints its config entry (only the hash is stored).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// CRM client: register connections from a CSV file through the API (role crm).
    Connections {
        #[command(subcommand)]
        command: ConnectionsCommand,
    },
    /// Privacy-officer client: export or erase everything stored for one EAN, or record or
    /// withdraw its objection to analytical use (role privacy_officer).
    Subject {
        #[command(subcommand)]
        command: SubjectCommand,
    },
    /// Operator client: a consistent backup of the running service's store (role operator).
    Backup(backup::BackupArgs),
    /// Put a backup in place of store.path (service stopped) and check that it opens.
    Restore(backup::RestoreArgs),
    /// The audit log: verify its hash chain, or report what was accessed (for a breach
    /// report: which subjects, which data, since when, by whom).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a random token for a role; prints it (or writes it to --out, mode 0600) and the
    /// `[[api.tokens]]` entry with its SHA-256 for the server's config.
    New {
        /// analyst, privacy_officer, crm or operator.
        #[arg(long)]
        role: String,
        /// A name for the token, shown in the audit log.
        #[arg(long)]
        id: String,
        /// Write the token to this new file instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Remove a token's entry from the config file given with --config (comments and other
    /// entries stay) and, with --pid, send the running service SIGHUP so that it re-reads
    /// its token table: the token is refused from the next request on.
    Revoke {
        /// The token's id.
        #[arg(long)]
        id: String,
        /// The running service's process id (e.g. `systemctl show -p MainPID meterstand`).
        #[arg(long)]
        pid: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every line's hash and the chain; exits 1 and names the first broken line when
    /// a line was removed, altered or reordered.
    Verify(audit::VerifyArgs),
    /// Per token: calls, refused calls, rows and subjects (pseudonyms) in a window; with
    /// --eans, the affected subjects of a CRM list as EANs. JSON or CSV.
    Report(audit::ReportArgs),
}

#[derive(Debug, Subcommand)]
enum ConnectionsCommand {
    /// PUT every row of a CSV (ean,consent,postcode4,profile); bad rows are reported by line
    /// number and the good ones kept. Exits 2 when any row was refused. A file with an
    /// analytics (or objection) column is refused whole: objections are the privacy
    /// officer's (`meterstand subject object`).
    Import(client::ImportArgs),
}

#[derive(Debug, Subcommand)]
enum SubjectCommand {
    /// Everything stored for the EAN (GDPR Art. 15/20), as JSON or CSV.
    Export(client::ExportArgs),
    /// Erase what may be erased for the EAN (GDPR Art. 17) and print the receipt.
    Erase(client::EraseArgs),
    /// Record the EAN's objection to analytical use (GDPR Art. 21), or withdraw it with
    /// --withdraw, and print the subject's state. The readings stay for billing and subject
    /// requests; the subject is in no statistic frozen while the objection holds, and what
    /// was stored meanwhile stays out after a withdrawal.
    Object(client::ObjectArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate and print the effective configuration, secrets redacted.
    Check,
    /// Print config/default.toml: every key with its default and a comment.
    Defaults,
}

fn process_env() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("METERSTAND"))
        .collect()
}

/// Parses the process's arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

/// The default server of the API clients: `https://<api.listen>` when the effective config
/// serves HTTPS, else `http://<api.listen>` (see [`Config::api_base_url`]).
fn config_server(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    Ok(Config::load(file, &process_env())?.api_base_url())
}

/// Runs a command; its exit code is 0 unless it says otherwise (import: 2 when rows were
/// refused).
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let env = process_env();
    let done = match cli.command {
        Command::Connections {
            command: ConnectionsCommand::Import(args),
        } => {
            let listen = config_server(cli.config.as_deref())?;
            let all_good = runtime()?.block_on(client::import(args, &listen))?;
            return Ok(if all_good {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            });
        }
        Command::Token {
            command: TokenCommand::New { role, id, out },
        } => client::new_token(&id, &role, out.as_deref()),
        Command::Token {
            command: TokenCommand::Revoke { id, pid },
        } => revoke_token(cli.config.as_deref(), &env, &id, pid),
        Command::Audit { command } => {
            let config = Config::load(cli.config.as_deref(), &env)?;
            match command {
                AuditCommand::Verify(args) => audit::verify(args, &config),
                AuditCommand::Report(args) => audit::report(args, &config, &env),
            }
        }
        Command::Backup(args) => {
            let listen = config_server(cli.config.as_deref())?;
            runtime()?.block_on(backup::backup(args, &listen))
        }
        Command::Restore(args) => {
            let config = Config::load(cli.config.as_deref(), &env)?;
            backup::restore(args, &config)
        }
        Command::Subject { command } => {
            let listen = config_server(cli.config.as_deref())?;
            match command {
                SubjectCommand::Export(args) => runtime()?.block_on(client::export(args, &listen)),
                SubjectCommand::Erase(args) => runtime()?.block_on(client::erase(args, &listen)),
                SubjectCommand::Object(args) => runtime()?.block_on(client::object(args, &listen)),
            }
        }
        Command::Keygen { out, rotate } => keygen(&out, rotate),
        Command::Config {
            command: ConfigCommand::Defaults,
        } => {
            print!("{}", config::DEFAULT_TOML);
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let config = Config::load(cli.config.as_deref(), &env)?;
            // Refuse here what `run` would refuse (an open key file, a token file readable
            // by others), not only what the config text says.
            config.preflight(&env)?;
            println!("# effective configuration (secrets redacted)");
            println!("# key file: {}", config.key_file(&env).display());
            print!("{}", config.redacted_toml());
            Ok(())
        }
        Command::Run => {
            let config = Config::load(cli.config.as_deref(), &env)?;
            service::init_logging(&config)?;
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(service::run_until_signal(config, cli.config.clone(), env))
        }
        Command::Demo(args) => {
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(demo::run(args, cli.config.as_deref(), env))
        }
        Command::Simulate(args) => {
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(simulate::run(args)).map(|_| ())
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}

fn revoke_token(
    config_file: Option<&std::path::Path>,
    env: &BTreeMap<String, String>,
    id: &str,
    pid: Option<u32>,
) -> anyhow::Result<()> {
    let Some(path) = config_file else {
        anyhow::bail!("give the service's config file with --config: the token is removed from it");
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (revised, removed) = audit::remove_token_entry(&text, id);
    if !removed {
        anyhow::bail!(
            "{} has no [[api.tokens]] entry with id {id:?}",
            path.display()
        );
    }
    std::fs::write(path, revised).with_context(|| format!("writing {}", path.display()))?;
    // The revised file must still be a valid configuration before the service re-reads it.
    Config::load(Some(path), env).context("the config without the token")?;
    println!("removed token {id:?} from {}", path.display());
    match pid {
        Some(pid) => {
            let status = std::process::Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .context("running kill -HUP")?;
            anyhow::ensure!(status.success(), "kill -HUP {pid} failed");
            println!("sent SIGHUP to {pid}: the token is refused from now on");
        }
        None => {
            println!("send the service SIGHUP (systemctl reload meterstand) to refuse it at once")
        }
    }
    Ok(())
}

fn keygen(out: &std::path::Path, rotate: bool) -> anyhow::Result<()> {
    if rotate {
        let mut ring = KeyRing::load(out)?;
        let version = ring.rotate()?;
        ring.replace(out)?;
        println!(
            "added key version {version} to {}; new data is pseudonymised under it",
            out.display()
        );
    } else {
        KeyRing::generate()?.create(out)?;
        println!(
            "wrote a new master key (version 1) to {} with mode 0600",
            out.display()
        );
        println!(
            "point keys.file (or METERSTAND_KEY_FILE) at it; keep it outside the data directory and back it up separately"
        );
    }
    Ok(())
}
