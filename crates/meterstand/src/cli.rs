//! The command line: clap definitions and the dispatch to the service, the clients and the
//! key and config tools. Exit codes: 0 ok, 1 error, 2 an import with refused rows.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meterstand_pseudonym::KeyRing;

use crate::config::Config;
use crate::{access, audit, backup, client, config, demo, service, simulate};

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
    /// entries stay; checked, then written atomically) and wait until the running service,
    /// sent SIGHUP (--pid) or reloaded by you, confirms on /metrics that it runs the table
    /// without it. Exits 1 unless confirmed (--no-wait: only edit the file).
    Revoke(access::RevokeArgs),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every line's hash and the chain; exits 1 and names the first broken line when
    /// a line was removed, altered or reordered.
    Verify(audit::VerifyArgs),
    /// Per token: calls, refused calls, rows and subjects (pseudonyms) in a window; with
    /// --eans, the affected subjects of a CRM list as EANs. JSON or CSV.
    Report(audit::ReportArgs),
    /// Record that a gap the service found (an audit.gap line) was looked into: verify
    /// and the chain-intact metric stop counting it. The acknowledgement is itself a line.
    Acknowledge(audit::AcknowledgeArgs),
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

/// `config defaults` prints every key with its default; `config check` the effective
/// configuration, refusing what `run` would refuse.
fn config_command(
    command: ConfigCommand,
    file: Option<&std::path::Path>,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Defaults => print!("{}", config::DEFAULT_TOML),
        ConfigCommand::Check => {
            let config = Config::load(file, env)?;
            // Refuse here what `run` would refuse (an open key file, a token file readable
            // by others), not only what the config text says.
            config.preflight(env)?;
            println!("# effective configuration (secrets redacted)");
            println!("# key file: {}", config.key_file(env).display());
            print!("{}", config.redacted_toml());
        }
    }
    Ok(())
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
            command: TokenCommand::Revoke(args),
        } => access::revoke(args, cli.config.as_deref(), &env),
        Command::Audit { command } => {
            let config = Config::load(cli.config.as_deref(), &env)?;
            match command {
                AuditCommand::Verify(args) => audit::verify(args, &config, &env),
                AuditCommand::Report(args) => audit::report(args, &config, &env),
                AuditCommand::Acknowledge(args) => audit::acknowledge(args, &config, &env),
            }
        }
        Command::Backup(args) => {
            let listen = config_server(cli.config.as_deref())?;
            runtime()?.block_on(backup::backup(args, &listen))
        }
        Command::Restore(args) => {
            let config = Config::load(cli.config.as_deref(), &env)?;
            backup::restore(args, &config, &env)
        }
        Command::Subject { command } => {
            let listen = config_server(cli.config.as_deref())?;
            match command {
                SubjectCommand::Export(args) => runtime()?.block_on(client::export(args, &listen)),
                SubjectCommand::Erase(args) => runtime()?.block_on(client::erase(args, &listen)),
                SubjectCommand::Object(args) => runtime()?.block_on(client::object(args, &listen)),
            }
        }
        Command::Keygen { out, rotate } => {
            // A rotation is an operator's action: audited, so it needs the configuration.
            let config = if rotate {
                Some(Config::load(cli.config.as_deref(), &env)?)
            } else {
                None
            };
            keygen(&out, config.as_ref())
        }
        Command::Config { command } => config_command(command, cli.config.as_deref(), &env),
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

/// `rotate`: the configuration whose audit log records the rotation.
fn keygen(out: &std::path::Path, rotate: Option<&Config>) -> anyhow::Result<()> {
    if let Some(config) = rotate {
        let mut ring = KeyRing::load(out)?;
        // Under the keys the running service has (the new version is not its yet), and
        // before the file changes: no rotation without its line.
        let entry = meterstand_audit::AuditEntry::operator(
            meterstand_audit::action::KEY_ROTATE,
            meterstand_audit::Outcome::Ok,
        )
        .with_param(
            "version",
            ring.current_version()
                .checked_add(1)
                .context("no more key versions are available")?
                .to_string(),
        );
        audit::operator_line_with(config, audit::chain_keys(&ring), &entry)?;
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
