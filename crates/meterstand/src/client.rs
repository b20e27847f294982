//! Command-line clients of the HTTP API (`connections import`, `subject
//! export|erase|object`) and `token new`. They take `--server` and `--token-file`; errors show the server's JSON error.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use meterstand_model::{ConsentLevel, Ean, Postcode4, Profile};
use serde::Deserialize;

/// Where the API is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Base URL of the meterstand API, http:// or https:// (default: https://<api.listen>
    /// from the config when it sets api.tls_cert, else http://<api.listen>).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// PEM file of the CA that signed the server's certificate (in addition to the public
    /// web roots), for a private CA.
    #[arg(long, value_name = "FILE", env = "METERSTAND_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for a server that asks for one (api.client_ca).
    #[arg(
        long,
        value_name = "FILE",
        requires = "client_key",
        env = "METERSTAND_CLIENT_CERT"
    )]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert (mode 0600).
    #[arg(
        long,
        value_name = "FILE",
        requires = "client_cert",
        env = "METERSTAND_CLIENT_KEY"
    )]
    pub client_key: Option<PathBuf>,
    /// File holding the bearer token (one line, mode 0600).
    #[arg(long, value_name = "FILE", env = "METERSTAND_TOKEN_FILE")]
    pub token_file: PathBuf,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// reqwest with rustls (the `ring` provider, installed here: the workspace builds reqwest
/// without a default one).
fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(120))
}

pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "the token file {} is readable by group or others; run chmod 600 on it",
            path.display()
        );
    }
    let token = std::fs::read_to_string(path)?.trim().to_string();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token)
}

impl Client {
    /// A client of `--server`, else of `default_server` (a base URL such as
    /// `https://127.0.0.1:8443`), trusting `--ca-file` and presenting `--client-cert`.
    pub fn new(args: &ServerArgs, default_server: &str) -> anyhow::Result<Client> {
        let base = args
            .server
            .clone()
            .unwrap_or_else(|| default_server.to_string());
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--server {base:?}: expected a URL starting with https:// or http://");
        }
        let mut builder = client_builder();
        if let Some(ca) = &args.ca_file {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read the CA file {}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!("the CA file {} holds no PEM certificate", ca.display())
            })?;
            if certs.is_empty() {
                bail!("the CA file {} holds no PEM certificate", ca.display());
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            let key_mode = std::fs::metadata(key)
                .with_context(|| format!("cannot read the client key {}", key.display()))?
                .permissions()
                .mode();
            if key_mode & 0o077 != 0 {
                bail!(
                    "the client key {} is readable by group or others; run chmod 600 on it",
                    key.display()
                );
            }
            let mut pem = std::fs::read(key)
                .with_context(|| format!("cannot read the client key {}", key.display()))?;
            pem.push(b'\n');
            pem.extend(std::fs::read(cert).with_context(|| {
                format!("cannot read the client certificate {}", cert.display())
            })?);
            let identity = reqwest::Identity::from_pem(&pem).context(
                "--client-cert and --client-key are not a PEM certificate and its private key",
            )?;
            builder = builder.identity(identity);
        }
        let http = builder.build().context("cannot build the HTTP client")?;
        Ok(Client::from_parts(
            http,
            base,
            read_token(&args.token_file)?,
        ))
    }

    pub fn with_token(base: String, token: String) -> anyhow::Result<Client> {
        let http = client_builder()
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client::from_parts(http, base, token))
    }

    fn from_parts(http: reqwest::Client, base: String, token: String) -> Client {
        Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
        }
    }

    /// Sends a request and returns the body of a 2xx answer; otherwise the server's error.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<String> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        // reqwest's errors name the URL, whose path holds the EAN: drop it.
        let response = req.send().await.map_err(|e| {
            anyhow::anyhow!("cannot reach the API at {}: {}", self.base, e.without_url())
        })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| anyhow::anyhow!("reading the API's answer: {}", e.without_url()))?;
        if status.is_success() {
            return Ok(text);
        }
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => bail!("{status}: {} ({})", e.error.message, e.error.code),
            Err(_) => bail!("{status}"),
        }
    }
}

/// `meterstand connections import FILE.csv`
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// CSV with a header line: ean,consent,postcode4,profile (postcode4 and profile may be
    /// empty). No analytics column: objections are the privacy officer's.
    pub file: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// One parsed row, ready to send.
#[derive(Debug, PartialEq)]
pub struct ImportRow {
    pub line: u64,
    pub ean: Ean,
    pub body: serde_json::Value,
}

/// A refused row: its line number and why, without the EAN's digits.
pub type BadRow = (u64, String);

/// Parses the CSV into rows to send and rows refused.
pub fn parse_import(data: &[u8]) -> anyhow::Result<(Vec<ImportRow>, Vec<BadRow>)> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(data);
    let headers = reader
        .headers()
        .context("the CSV has no header line")?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    // Earlier versions took the objection from the CRM's file. Refused whole rather than
    // ignored: a CRM that believes it records objections this way must learn that it does
    // not, before any row is sent.
    if let Some(name) = ["analytics", "objection"]
        .into_iter()
        .find(|n| col(n).is_some())
    {
        bail!(
            "the CSV has a column {name}: connections no longer carry an objection to \
             analytical use; the privacy officer records it per EAN with `meterstand subject \
             object --ean E` (PUT /v1/subjects/{{ean}}/objection). Remove the column (columns: \
             ean, consent, postcode4, profile) and import again; nothing was sent"
        );
    }
    let (Some(ean_col), Some(consent_col)) = (col("ean"), col("consent")) else {
        bail!(
            "the CSV header must name the columns ean and consent (postcode4 and profile optional)"
        );
    };
    let (postcode_col, profile_col) = (col("postcode4"), col("profile"));
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                bad.push((line, "unreadable CSV row".to_string()));
                continue;
            }
        };
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let field = |i: Option<usize>| i.and_then(|i| record.get(i)).filter(|s| !s.is_empty());
        let Some(ean) = field(Some(ean_col)).and_then(|s| s.parse::<Ean>().ok()) else {
            bad.push((
                line,
                "bad EAN (18 digits with a valid GS1 check digit)".into(),
            ));
            continue;
        };
        let Some(consent) = field(Some(consent_col)).and_then(|s| s.parse::<ConsentLevel>().ok())
        else {
            bad.push((
                line,
                "bad consent (off, standard, daily or interval)".into(),
            ));
            continue;
        };
        let postcode = field(postcode_col);
        if postcode.is_some_and(|p| p.parse::<Postcode4>().is_err()) {
            bad.push((line, "bad postcode4 (four digits, 1000 to 9999)".into()));
            continue;
        }
        let profile = field(profile_col);
        if profile.is_some_and(|p| p.parse::<Profile>().is_err()) {
            bad.push((line, "bad profile (1 to 8 letters or digits)".into()));
            continue;
        }
        good.push(ImportRow {
            line,
            ean,
            body: serde_json::json!({
                "consent": consent.as_str(),
                "postcode4": postcode,
                "profile": profile,
            }),
        });
    }
    Ok((good, bad))
}

pub async fn import(args: ImportArgs, default_server: &str) -> anyhow::Result<bool> {
    let data = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let (rows, mut bad) = parse_import(&data)?;
    let client = Client::new(&args.server, default_server)?;
    let bar = ProgressBar::new(rows.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} connections {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut imported = 0u64;
    for row in rows {
        let path = format!("/v1/connections/{}", row.ean.expose());
        match client
            .send(reqwest::Method::PUT, &path, Some(row.body))
            .await
        {
            Ok(_) => imported += 1,
            Err(e) => bad.push((row.line, e.to_string())),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    bad.sort_by_key(|(line, _)| *line);
    for (line, reason) in &bad {
        eprintln!("{}:{line}: {reason}", args.file.display());
    }
    println!(
        "imported {imported} connections, {} rows refused",
        bad.len()
    );
    Ok(bad.is_empty())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutFormat {
    Json,
    Csv,
}

/// `meterstand subject export --ean`
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The connection's EAN.
    #[arg(long)]
    pub ean: String,
    #[arg(long, value_enum, default_value = "json")]
    pub format: OutFormat,
    /// Write to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `meterstand subject erase --ean`
#[derive(Debug, Args)]
pub struct EraseArgs {
    /// The connection's EAN.
    #[arg(long)]
    pub ean: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `meterstand subject object --ean [--withdraw]`
#[derive(Debug, Args)]
pub struct ObjectArgs {
    /// The connection's EAN.
    #[arg(long)]
    pub ean: String,
    /// Withdraw the objection instead of recording it.
    #[arg(long)]
    pub withdraw: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

fn checked_ean(text: &str) -> anyhow::Result<Ean> {
    text.trim()
        .parse::<Ean>()
        .map_err(|_| anyhow::anyhow!("--ean must be 18 digits with a valid GS1 check digit"))
}

pub async fn export(args: ExportArgs, default_server: &str) -> anyhow::Result<()> {
    let ean = checked_ean(&args.ean)?;
    let client = Client::new(&args.server, default_server)?;
    let format = match args.format {
        OutFormat::Json => "json",
        OutFormat::Csv => "csv",
    };
    let body = client
        .send(
            reqwest::Method::GET,
            &format!("/v1/subjects/{}/export?format={format}", ean.expose()),
            None,
        )
        .await?;
    match args.out {
        Some(path) => {
            write_private(&path, body.as_bytes(), false)?;
            eprintln!("export written to {}", path.display());
        }
        None => println!("{body}"),
    }
    Ok(())
}

pub async fn erase(args: EraseArgs, default_server: &str) -> anyhow::Result<()> {
    let ean = checked_ean(&args.ean)?;
    let client = Client::new(&args.server, default_server)?;
    let body = client
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/subjects/{}", ean.expose()),
            None,
        )
        .await?;
    println!("{body}");
    Ok(())
}

/// Records (`PUT`) or withdraws (`DELETE`) the objection; prints the subject's state.
pub async fn object(args: ObjectArgs, default_server: &str) -> anyhow::Result<()> {
    let ean = checked_ean(&args.ean)?;
    let client = Client::new(&args.server, default_server)?;
    let method = if args.withdraw {
        reqwest::Method::DELETE
    } else {
        reqwest::Method::PUT
    };
    let body = client
        .send(
            method,
            &format!("/v1/subjects/{}/objection", ean.expose()),
            None,
        )
        .await?;
    println!("{body}");
    Ok(())
}

/// A random bearer token: 256 bits, hex, with a recognisable prefix.
pub fn generate_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!("mst_{}", hex::encode(bytes)))
}

/// Writes `bytes` to a file only its owner can read (mode 0600); with `must_be_new` an
/// existing file is refused instead of replaced.
pub fn write_private(path: &Path, bytes: &[u8], must_be_new: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if must_be_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    let mut f = options.open(path).with_context(|| {
        if must_be_new {
            format!("cannot create {} (it must not exist yet)", path.display())
        } else {
            format!("cannot write {}", path.display())
        }
    })?;
    f.write_all(bytes)?;
    Ok(())
}

/// `meterstand token new`: a random token and its config entry.
pub fn new_token(id: &str, role: &str, out: Option<&Path>) -> anyhow::Result<()> {
    let role: meterstand_api::Role = role.parse().map_err(anyhow::Error::msg)?;
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("--id must be letters, digits, - or _");
    }
    let token = generate_token()?;
    let hash = meterstand_api::hash_token(&token);
    match out {
        Some(path) => {
            write_private(path, format!("{token}\n").as_bytes(), true)?;
            eprintln!(
                "token written to {} (mode 0600); give it to the client",
                path.display()
            );
        }
        None => {
            println!("# the token; give it to the client and keep it secret (it is not stored):");
            println!("{token}");
        }
    }
    println!("# add to the server's config (e.g. /etc/meterstand/meterstand.toml), then reload");
    println!("# it: systemctl reload meterstand (SIGHUP re-reads the tokens, no restart):");
    println!("[[api.tokens]]");
    println!("id = \"{id}\"");
    println!("role = \"{}\"", role.as_str());
    println!("hash = \"{hash}\"");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_keeps_good_rows_and_reports_bad_ones_by_line() {
        let good_ean = Ean::from_body(87_168_712_000_000_001).expect("ean");
        let good_ean = good_ean.expose();
        // The same digits with a wrong check digit.
        let bad_ean = format!(
            "{}{}",
            &good_ean[..17],
            (good_ean.as_bytes()[17] - b'0' + 1) % 10
        );
        let csv = format!(
            "ean,consent,postcode4,profile\n\
             {good_ean},interval,1234,E1A\n\
             {bad_ean},daily,1234,E1A\n\
             {good_ean},sometimes,1234,E1A\n\
             {good_ean},daily,,\n\
             {good_ean},daily,0123,E1A\n"
        );
        let (good, bad) = parse_import(csv.as_bytes()).expect("parsed");
        assert_eq!(good.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2, 5]);
        assert_eq!(good[1].body["postcode4"], serde_json::Value::Null);
        assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), vec![3, 4, 6]);
        assert!(bad[0].1.contains("EAN"));
        assert!(!bad.iter().any(|b| b.1.contains(&bad_ean)));
        assert!(parse_import(b"id,level\n1,2\n").is_err());
    }

    #[test]
    fn import_refuses_a_file_with_an_objection_column() {
        let ean = Ean::from_body(87_168_712_000_000_001).expect("ean");
        for header in [
            "ean,consent,postcode4,profile,analytics",
            "EAN,Consent,Analytics",
            "ean,consent,objection",
        ] {
            let csv = format!("{header}\n{},daily,1234,E1A,false\n", ean.expose());
            let err = parse_import(csv.as_bytes()).expect_err(header).to_string();
            assert!(
                err.contains("subject object") && err.contains("/v1/subjects/{ean}/objection"),
                "{err}"
            );
            assert!(!err.contains(ean.expose()), "{err}");
        }
    }
}
