//! `meterstand token revoke`: removes a token's entry from the config file, atomically and
//! only once the result is a valid configuration, then waits until the running service
//! confirms on `/metrics` that the token table it runs is the one without the token. It
//! exits non-zero unless that is confirmed (or `--no-wait` says not to wait).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::client::{Client, ServerArgs};
use crate::config::Config;

/// `meterstand token revoke`
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The token's id.
    #[arg(long)]
    pub id: String,
    /// The running service's process id (e.g. `systemctl show -p MainPID --value
    /// meterstand`): it is sent SIGHUP. Without it, send SIGHUP yourself (`systemctl reload
    /// meterstand`) while the command waits.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Base URL of the running service's API, whose /metrics confirms the reload (default:
    /// from the config, as for the other clients).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// An operator token (mode 0600), to read /metrics; not the token being revoked.
    #[arg(long, value_name = "FILE", env = "METERSTAND_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of a private CA that signed the server's certificate.
    #[arg(long, value_name = "FILE", env = "METERSTAND_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for a server that asks for one (api.client_ca).
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert (mode 0600).
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// How long to wait for the service to confirm.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Only edit the file (and signal --pid): do not ask the service. The token is then
    /// accepted until the service re-reads its config; nothing here says when that is.
    #[arg(long)]
    pub no_wait: bool,
}

/// Removes every `[[api.tokens]]` entry with `id` from a config file's text, keeping
/// comments, order and layout of the rest (a comment on the lines just above the entry goes
/// with it). Fails when the text is not TOML or has no such entry.
pub fn remove_token(text: &str, id: &str) -> anyhow::Result<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().context("the config file is not TOML")?;
    let id_of = |t: Option<&toml_edit::Item>| t.and_then(|v| v.as_str()).map(str::to_string);
    let removed = match doc.get_mut("api").and_then(|api| api.get_mut("tokens")) {
        Some(toml_edit::Item::ArrayOfTables(tables)) => {
            let before = tables.len();
            tables.retain(|t| id_of(t.get("id")).as_deref() != Some(id));
            before - tables.len()
        }
        Some(toml_edit::Item::Value(toml_edit::Value::Array(values))) => {
            let before = values.len();
            values.retain(|v| {
                v.as_inline_table()
                    .and_then(|t| t.get("id"))
                    .and_then(|v| v.as_str())
                    != Some(id)
            });
            before - values.len()
        }
        _ => 0,
    };
    if removed == 0 {
        bail!("it has no [[api.tokens]] entry with id {id:?}");
    }
    Ok(doc.to_string())
}

/// Runs `token revoke`: see the module documentation and docs/operations.md §4.
pub fn revoke(
    args: RevokeArgs,
    config_file: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let Some(given) = config_file else {
        bail!("give the service's config file with --config: the token is removed from it");
    };
    // The file itself, not a symbolic link to it: the new text replaces the file it names.
    let path = std::fs::canonicalize(given)
        .with_context(|| format!("cannot find the config file {}", given.display()))?;
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let revised = remove_token(&text, &args.id).with_context(|| format!("{}", path.display()))?;
    let before = Config::load(Some(&path), env).context("the config as it is")?;
    let staged = Staged::write(&path, &revised)?;
    // Checked as the service will read it, before it replaces anything.
    let after = Config::load(Some(&staged.tmp), env)
        .and_then(|c| {
            if c.api.tokens.iter().any(|t| t.id == args.id) {
                Err(crate::config::ConfigError::Invalid(format!(
                    "api.tokens still names {:?} (e.g. from a METERSTAND__API__TOKENS variable)",
                    args.id
                )))
            } else {
                Ok(c)
            }
        })
        .with_context(|| {
            format!(
                "the config without the token would not load (checked as {}); nothing was changed",
                staged.tmp.display()
            )
        })?;
    let expected = after
        .token_table()
        .context("the token table without the token; nothing was changed")?
        .fingerprint();
    let watcher = if args.no_wait {
        None
    } else {
        Some(Watcher::new(&args, &before)?)
    };
    staged.commit()?;
    println!("removed token {:?} from {}", args.id, path.display());
    if let Some(pid) = args.pid {
        send_hangup(pid)?;
        println!("sent SIGHUP to {pid}");
    }
    let Some(watcher) = watcher else {
        println!(
            "not confirmed (--no-wait): the service accepts the token until it re-reads its \
             config (SIGHUP, or a restart); it runs this file's token table once its /metrics \
             shows meterstand_token_table_info{{fingerprint=\"{expected}\"}}"
        );
        audit_revocation(&after, env, &args.id, &expected, "not asked (--no-wait)");
        return Ok(());
    };
    if args.pid.is_none() {
        println!(
            "send the service SIGHUP now (systemctl reload meterstand); waiting up to {} for it \
             to confirm",
            humantime::format_duration(args.timeout)
        );
    }
    let confirmed = watcher.confirm(&args.id, &expected, args.timeout);
    let said = if confirmed.is_ok() { "yes" } else { "no" };
    audit_revocation(&after, env, &args.id, &expected, said);
    confirmed
}

/// The operator's own `token.revoke` line (who ran the command, which token, whether the
/// service confirmed), beside the lines the service writes when the reload takes effect. A
/// line that cannot be written (the master key, which keys the chain, not readable by this
/// user, say) is reported and does not undo the revocation: the service's lines still
/// record it.
fn audit_revocation(
    config: &Config,
    env: &BTreeMap<String, String>,
    id: &str,
    fingerprint: &str,
    confirmed: &str,
) {
    use meterstand_audit::{AuditEntry, Outcome};
    let outcome = if confirmed == "no" {
        Outcome::Error
    } else {
        Outcome::Ok
    };
    let entry = AuditEntry::operator(super::TOKEN_REVOKE, outcome)
        .with_param("token", id)
        .with_param("fingerprint", fingerprint)
        .with_param("confirmed", confirmed);
    if let Err(e) = crate::audit::operator_line(config, env, &entry) {
        eprintln!(
            "warning: this revocation is not in the audit log ({e:#}); the service records it when it re-reads the file"
        );
    }
}

/// Sends SIGHUP to `pid`.
fn send_hangup(pid: u32) -> anyhow::Result<()> {
    let target = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .with_context(|| format!("--pid {pid} is not a process id"))?;
    rustix::process::kill_process(target, rustix::process::Signal::HUP).with_context(|| {
        format!(
            "cannot send SIGHUP to process {pid}; the file is changed, the service not: \
                 send it SIGHUP yourself (systemctl reload meterstand)"
        )
    })
}

/// The revised config in a temporary file beside the original, with its mode and owner,
/// synced; removed on drop unless [`Staged::commit`] renamed it over the original.
struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Staged {
    fn write(path: &Path, text: &str) -> anyhow::Result<Staged> {
        let meta = std::fs::metadata(path)?;
        let dir = path.parent().context("the config file has no directory")?;
        let name = path.file_name().context("the config file has no name")?;
        let tmp = dir.join(format!(
            ".{}.revoke-{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        let mode = meta.permissions().mode() & 0o7777;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let staged = Staged {
            tmp,
            path: path.to_path_buf(),
            committed: false,
        };
        // The umask may have taken bits away; and the service must still be able to read
        // the file, so it keeps its owner (refused if that cannot be done).
        std::fs::set_permissions(&staged.tmp, std::fs::Permissions::from_mode(mode))?;
        let ours = std::fs::metadata(&staged.tmp)?;
        if (ours.uid(), ours.gid()) != (meta.uid(), meta.gid()) {
            std::os::unix::fs::chown(&staged.tmp, Some(meta.uid()), Some(meta.gid()))
                .with_context(|| {
                    format!(
                        "cannot give the new config file the owner of {} (uid {}, gid {}); run \
                         this as that user or as root; nothing was changed",
                        path.display(),
                        meta.uid(),
                        meta.gid()
                    )
                })?;
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        Ok(staged)
    }

    /// Renames the temporary file over the original and syncs the directory: the file is
    /// either the old text or the new, whatever happens.
    fn commit(mut self) -> anyhow::Result<()> {
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("cannot replace {}", self.path.display()))?;
        self.committed = true;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("syncing {}", dir.display()))?;
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// What `/metrics` says about the token table in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    pub generation: Option<u64>,
    pub fingerprint: Option<String>,
    pub failures: Option<u64>,
}

impl Seen {
    pub(crate) fn parse(exposition: &str) -> Seen {
        let mut seen = Seen::default();
        for line in exposition.lines() {
            let mut parts = line.split_whitespace();
            let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let number = || value.parse::<f64>().ok().map(|v| v as u64);
            if name == "meterstand_token_table_generation" {
                seen.generation = number();
            } else if name == "meterstand_token_reload_failures_total" {
                seen.failures = number();
            } else if let Some(rest) =
                name.strip_prefix("meterstand_token_table_info{fingerprint=\"")
                && value == "1"
            {
                seen.fingerprint = rest.strip_suffix("\"}").map(str::to_string);
            }
        }
        seen
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let or_none = |v: Option<String>| v.unwrap_or_else(|| "none".into());
        write!(
            f,
            "token table generation {}, fingerprint {}, reload failures {}",
            or_none(self.generation.map(|g| g.to_string())),
            or_none(self.fingerprint.clone()),
            or_none(self.failures.map(|n| n.to_string())),
        )
    }
}

/// Reads the service's `/metrics` before and after the change.
struct Watcher {
    rt: tokio::runtime::Runtime,
    client: Client,
    before: Seen,
}

impl Watcher {
    /// Connects and reads the service's state before anything is changed, so that a wrong
    /// `--server` or token fails while the file is still as it was.
    fn new(args: &RevokeArgs, config: &Config) -> anyhow::Result<Watcher> {
        let Some(token_file) = &args.token_file else {
            bail!(
                "give --token-file with an operator token, so that the running service can \
                 confirm the revocation on /metrics (or --no-wait to only edit the file); \
                 nothing was changed"
            );
        };
        let presented = crate::client::read_token(token_file)?;
        let revoked = config.token_table()?;
        if revoked
            .lookup(&presented)
            .is_some_and(|identity| identity.id == args.id)
        {
            bail!(
                "--token-file holds the token being revoked: the service would refuse it before \
                 confirming; give another operator token; nothing was changed"
            );
        }
        let server = ServerArgs {
            server: args.server.clone(),
            ca_file: args.ca_file.clone(),
            client_cert: args.client_cert.clone(),
            client_key: args.client_key.clone(),
            token_file: token_file.clone(),
        };
        let client = Client::new(&server, &config.api_base_url())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let before = read(&rt, &client).with_context(|| {
            "cannot read the running service's /metrics; pass --server and --token-file, or \
             --no-wait to only edit the file; nothing was changed"
        })?;
        if before.generation.is_none() {
            bail!(
                "the service's /metrics has no meterstand_token_table_generation (an older \
                 version?); use --no-wait and check by hand; nothing was changed"
            );
        }
        Ok(Watcher { rt, client, before })
    }

    /// Waits until the service runs the table with fingerprint `expected`; fails, naming
    /// what it saw, when its reload failed or it did not within `timeout`.
    fn confirm(self, id: &str, expected: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = Ok(self.before.clone());
        loop {
            if let Ok(seen) = &last {
                if seen.fingerprint.as_deref() == Some(expected) {
                    println!(
                        "confirmed: the service runs the token table of the file ({seen}); \
                         token {id:?} is refused"
                    );
                    return Ok(());
                }
                if seen.failures > self.before.failures {
                    bail!(
                        "the service could not re-read its config ({seen}; before: {}): it \
                         kept only the tokens still in the file, so {id:?} is refused, but not \
                         the table the file gives; its log says why",
                        self.before
                    );
                }
            }
            if Instant::now() >= deadline {
                let saw = match &last {
                    Ok(seen) => seen.to_string(),
                    Err(e) => format!("no answer ({e:#})"),
                };
                bail!(
                    "not confirmed within {}: the service reports {saw} (before: {}), not the \
                     fingerprint {expected} of the file; it may still accept {id:?}. Send it \
                     SIGHUP (systemctl reload meterstand) and check \
                     meterstand_token_table_info on /metrics",
                    humantime::format_duration(timeout),
                    self.before
                );
            }
            std::thread::sleep(Duration::from_millis(200));
            last = read(&self.rt, &self.client);
        }
    }
}

fn read(rt: &tokio::runtime::Runtime, client: &Client) -> anyhow::Result<Seen> {
    let body = rt.block_on(client.send(reqwest::Method::GET, "/metrics", None))?;
    Ok(Seen::parse(&body))
}
