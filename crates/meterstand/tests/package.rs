//! The Debian package (docs/operations.md, "Install from the package"): the `.deb` that
//! `scripts/package` builds, unpacked with `dpkg-deb -x` into a temporary root. Its files and
//! modes; the unpacked binary run with the packaged config, its paths moved into the test's
//! directory by `METERSTAND__…` variables, against a real Mosquitto; the unit checked by
//! `systemd-analyze verify` and rated by `systemd-analyze security --offline=true`; lintian.
//!
//! The package is taken from `$CARGO_TARGET_DIR/debian/` when it is newer than the binary
//! cargo built for these tests, else made with `scripts/package --no-build` (seconds). A
//! missing tool (cargo-deb, dpkg-deb, systemd-analyze, lintian) fails the test under
//! `METERSTAND_REQUIRE_TOOLS=1` (CI) and otherwise skips it, saying which and why.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use meterstand_model::{Reading, Register};

/// The package's version: the crate's, Debian revision 1 (packaging/debian/changelog).
fn deb_version() -> String {
    format!("{}-1", env!("CARGO_PKG_VERSION"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether `tool args` runs. When it does not, the test fails under
/// `METERSTAND_REQUIRE_TOOLS=1` and is otherwise reported as skipped.
fn have(test: &str, tool: &str, args: &[&str]) -> bool {
    let runs = Command::new(tool)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !runs {
        skip(
            test,
            &format!(
                "`{tool}` is missing (scripts/test installs it: lintian, systemd and dpkg-dev \
                 through apt-get, cargo-deb through scripts/prereqs.sh)"
            ),
        );
    }
    runs
}

fn skip(test: &str, why: &str) {
    if std::env::var("METERSTAND_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("{test}: {why}, and METERSTAND_REQUIRE_TOOLS=1");
    }
    // Straight to stderr, past the harness's capture: a skip must show in a passing run.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The `.deb` of this version in `$CARGO_TARGET_DIR/debian/`, newest first.
fn find_deb(dir: &Path) -> Option<PathBuf> {
    let prefix = format!("meterstand_{}_", deb_version());
    let mut debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    debs.sort_by_key(|p| std::cmp::Reverse(modified(p)));
    debs.into_iter().next()
}

/// When the newest of what goes into the package changed: the binary these tests run, the
/// packaging files, the crate's manifest (its `[package.metadata.deb]`) and the assets.
fn newest_input() -> Option<std::time::SystemTime> {
    let mut inputs = vec![
        PathBuf::from(METERSTAND),
        repo().join("crates/meterstand/Cargo.toml"),
        repo().join("README.md"),
        repo().join("config/grafana/meterstand.json"),
        repo().join("config/prometheus/alerts.yml"),
    ];
    for dir in ["packaging/debian", "docs"] {
        let entries = std::fs::read_dir(repo().join(dir)).expect(dir);
        inputs.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
    }
    inputs.iter().filter_map(|p| modified(p)).max()
}

/// The package of the binary these tests run, built once per test binary; `Err` says why
/// there is none.
fn package() -> &'static Result<PathBuf, String> {
    static DEB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DEB.get_or_init(|| {
        // CARGO_BIN_EXE_meterstand is <target dir>/release/meterstand.
        let target = Path::new(METERSTAND)
            .parent()
            .and_then(Path::parent)
            .expect("the binary lies in <target>/release");
        if let Some(deb) = find_deb(&target.join("debian"))
            && modified(&deb) >= newest_input()
        {
            return Ok(deb);
        }
        let runs = Command::new("cargo")
            .args(["deb", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !runs {
            return Err(
                "cargo-deb is missing and the package is not built (scripts/package \
                        installs cargo-deb and builds it)"
                    .into(),
            );
        }
        let out = Command::new(repo().join("scripts/package"))
            .args(["--no-build", "--fast"])
            .env("CARGO_TARGET_DIR", target)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/package");
        assert!(
            out.status.success(),
            "scripts/package --no-build failed:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        find_deb(&target.join("debian")).ok_or_else(|| "scripts/package made no .deb".into())
    })
}

/// The package when it and `tools` are here; else `None`, after skipping (or failing).
fn deb_with(test: &str, tools: &[(&str, &[&str])]) -> Option<PathBuf> {
    if !have(test, "dpkg-deb", &["--version"]) {
        return None;
    }
    for (tool, args) in tools {
        if !have(test, tool, args) {
            return None;
        }
    }
    match package() {
        Ok(deb) => Some(deb.clone()),
        Err(why) => {
            skip(test, why);
            None
        }
    }
}

/// Runs a command and returns its output; panics when it cannot start.
fn run(cmd: &mut Command) -> std::process::Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Unpacks the package's files and its control area (`DEBIAN/`) into `root`.
fn unpack(deb: &Path, root: &Path) {
    for (flag, into) in [("-x", root.to_path_buf()), ("-e", root.join("DEBIAN"))] {
        let out = run(Command::new("dpkg-deb").arg(flag).arg(deb).arg(&into));
        assert!(
            out.status.success(),
            "dpkg-deb {flag}: {}",
            text(&out.stderr)
        );
    }
}

/// Whether a `dpkg-deb -c` owner is root's (cargo-deb writes ids, dpkg-deb names).
fn is_root(owner: &str) -> bool {
    owner == "0/0" || owner == "root/root"
}

/// `dpkg-deb -c`: path → (mode string, owner/group) of every entry.
fn contents(deb: &Path) -> BTreeMap<String, (String, String)> {
    let out = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    assert!(out.status.success(), "dpkg-deb -c: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let path = fields.get(5)?.trim_start_matches('.');
            Some((
                path.trim_end_matches('/').to_string(),
                (fields[0].to_string(), fields[1].to_string()),
            ))
        })
        .collect()
}

const UNIT: &str = "/usr/lib/systemd/system/meterstand.service";
const CONFIG: &str = "/etc/meterstand/meterstand.toml";

#[test]
fn the_package_holds_its_files_with_their_modes_and_scripts() {
    let test = "the_package_holds_its_files_with_their_modes_and_scripts";
    let Some(deb) = deb_with(test, &[]) else {
        return;
    };
    let files = contents(&deb);
    let mut expected: BTreeMap<String, &str> = [
        ("/usr/bin/meterstand", "-rwxr-xr-x"),
        (CONFIG, "-rw-r--r--"),
        (UNIT, "-rw-r--r--"),
        (
            "/usr/share/meterstand/grafana/meterstand.json",
            "-rw-r--r--",
        ),
        ("/usr/share/meterstand/prometheus/alerts.yml", "-rw-r--r--"),
        ("/usr/share/doc/meterstand/README.md", "-rw-r--r--"),
        ("/usr/share/doc/meterstand/copyright", "-rw-r--r--"),
        (
            "/usr/share/doc/meterstand/changelog.Debian.gz",
            "-rw-r--r--",
        ),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_string(), m))
    .collect();
    for doc in std::fs::read_dir(repo().join("docs")).expect("docs/") {
        let name = doc.expect("docs entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".md") {
            expected.insert(format!("/usr/share/doc/meterstand/{name}"), "-rw-r--r--");
        }
    }
    for (path, mode) in &expected {
        let (found, owner) = files
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not in the package: {files:#?}"));
        assert_eq!(found, mode, "mode of {path}");
        assert!(is_root(owner), "owner of {path}: {owner}");
    }
    let regular: Vec<&String> = files
        .iter()
        .filter(|(_, (mode, _))| mode.starts_with('-'))
        .map(|(path, _)| path)
        .collect();
    let unexpected: Vec<&&String> = regular
        .iter()
        .filter(|p| !expected.contains_key(p.as_str()))
        .collect();
    assert!(unexpected.is_empty(), "files nobody listed: {unexpected:?}");
    for (path, (mode, owner)) in &files {
        assert!(is_root(owner), "owner of {path}: {owner}");
        let bytes = mode.as_bytes();
        assert!(
            bytes[5] != b'w' && bytes[8] != b'w' && !mode.contains(['s', 'S']),
            "{path} is {mode}: writable by group or others, or set-id"
        );
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    unpack(&deb, &root);
    // What dpkg installs is what the repository holds.
    for (packaged, source) in [
        (UNIT, "packaging/debian/meterstand.service"),
        (CONFIG, "packaging/debian/meterstand.toml"),
        (
            "/usr/share/meterstand/prometheus/alerts.yml",
            "config/prometheus/alerts.yml",
        ),
    ] {
        let inside = std::fs::read(root.join(&packaged[1..])).expect("packaged file");
        let outside = std::fs::read(repo().join(source)).expect("source file");
        assert!(inside == outside, "{packaged} differs from {source}");
    }
    control_area(&root.join("DEBIAN"));
}

/// The control area: version, dependencies, the config as a conffile, and maintainer
/// scripts with the systemd snippets cargo-deb put in place of `#DEBHELPER#`.
fn control_area(debian: &Path) {
    let read = |name: &str| std::fs::read_to_string(debian.join(name)).expect(name);
    let control = read("control");
    assert!(
        control.contains(&format!("\nVersion: {}\n", deb_version())),
        "{control}"
    );
    let depends = control
        .lines()
        .find(|l| l.starts_with("Depends:"))
        .unwrap_or_default();
    assert!(depends.contains("adduser"), "{control}");
    let changelog = std::fs::read_to_string(repo().join("packaging/debian/changelog"))
        .expect("packaging/debian/changelog");
    assert!(
        changelog.starts_with(&format!("meterstand ({}) ", deb_version())),
        "the changelog's first entry must be the crate's version {}",
        deb_version()
    );
    assert_eq!(read("conffiles").trim(), CONFIG);
    for script in ["postinst", "prerm", "postrm"] {
        let body = read(script);
        assert!(!body.contains("#DEBHELPER#"), "{script} kept #DEBHELPER#");
        assert!(
            body.contains("deb-systemd-"),
            "{script}: no systemd snippet"
        );
        let mode = std::fs::metadata(debian.join(script))
            .expect(script)
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o755,
            "{script}"
        );
    }
    let postinst = read("postinst");
    assert!(
        postinst.contains(r#"if [ ! -e "$KEY" ] && [ ! -L "$KEY" ]; then"#)
            && postinst.contains(r#"meterstand keygen --out "$KEY""#),
        "postinst makes the key only when there is none:\n{postinst}"
    );
}

/// The service's paths, moved from the packaged ones into `dir`.
fn moved_paths(dir: &Path, key: &Path, broker: &str, api: &str) -> Vec<(String, String)> {
    let at = |p: &str| dir.join(p).display().to_string();
    vec![
        ("METERSTAND_KEY_FILE".into(), key.display().to_string()),
        ("METERSTAND__BROKER__URL".into(), broker.into()),
        ("METERSTAND__API__LISTEN".into(), api.into()),
        ("METERSTAND__STORE__PATH".into(), at("lib/data")),
        (
            "METERSTAND__STORE__JOURNAL".into(),
            at("lib/subject-journal.jsonl"),
        ),
        ("METERSTAND__BACKUP__DIR".into(), at("lib/backups")),
        ("METERSTAND__API__AUDIT_LOG".into(), at("log/audit.jsonl")),
    ]
}

/// The unpacked binary with `env` only (and PATH).
fn packaged(root: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(root.join("usr/bin/meterstand"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

#[test]
fn the_packaged_service_starts_on_loopback_refuses_without_tokens_ingests_and_stops() {
    let test = "the_packaged_service_starts_on_loopback_refuses_without_tokens_ingests_and_stops";
    let Some(deb) = deb_with(test, &[]) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    unpack(&deb, &root);
    let config = root.join(&CONFIG[1..]);
    // The key as the postinst makes it, with the packaged binary.
    let key = tmp.path().join("keys/master.key");
    std::fs::create_dir_all(key.parent().expect("parent")).expect("keys dir");
    let out = run(packaged(&root, &[]).arg("keygen").arg("--out").arg(&key));
    assert!(out.status.success(), "keygen: {}", text(&out.stderr));

    packaged_config_as_shipped(&root, &config, &key);

    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let api: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let state = tmp.path().join("state");
    let env = moved_paths(&state, &key, &broker.url(), &api.to_string());
    let log = tmp.path().join("service.log");
    let mut child = Running(
        packaged(&root, &env)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start the packaged meterstand"),
    );
    let client = Client::new(api);
    client.wait_ready(Duration::from_secs(30));

    every_call_is_refused(&client);

    let operator = add_operator_token(&root, &config, &child.0, &client, tmp.path());
    let operator = operator.as_str();
    ingest_one_message(&broker, &client, operator);
    // The backup directory moved with the others.
    let backup = client.request(
        "POST",
        "/v1/backups",
        Some(operator),
        Some(r#"{"name": "b1"}"#),
    );
    assert_eq!(backup.as_ref().map(|a| a.0), Some(200), "{backup:?}");

    signal(&child.0, "TERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "exit {status}:\n{logged}");
    assert!(logged.contains("meterstand stopped"), "{logged}");
    // Everything the service wrote is where the variables put it.
    for written in ["lib/data/CURRENT", "lib/backups/b1", "log/audit.jsonl"] {
        assert!(
            state.join(written).exists(),
            "{written} missing under {state:?}"
        );
    }
}

/// A child process killed when the test ends early.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The packaged configuration as it is: package paths, loopback, no token (`config check`,
/// which also loads the key, with only the key file moved).
fn packaged_config_as_shipped(root: &Path, config: &Path, key: &Path) {
    let key_only = [("METERSTAND_KEY_FILE".to_string(), key.display().to_string())];
    let out = run(packaged(root, &key_only)
        .arg("--config")
        .arg(config)
        .args(["config", "check"]));
    let effective = text(&out.stdout);
    assert!(out.status.success(), "config check: {}", text(&out.stderr));
    for line in [
        r#"path = "/var/lib/meterstand/data""#,
        r#"journal = "/var/lib/meterstand/subject-journal.jsonl""#,
        r#"dir = "/var/lib/meterstand/backups""#,
        r#"file = "/etc/meterstand/master.key""#,
        r#"listen = "127.0.0.1:8080""#,
        r#"audit_log = "/var/log/meterstand/audit.jsonl""#,
        "tokens = []",
    ] {
        assert!(
            effective.lines().any(|l| l.trim() == line),
            "the packaged config lacks {line}:\n{effective}"
        );
    }
}

/// No token configured: every call is refused, whatever it carries.
fn every_call_is_refused(client: &Client) {
    let guess = "mst_a_guessed_token_0123456789abcdef";
    for (method, path, body) in [
        ("GET", "/metrics", None),
        ("GET", "/v1/statistics", None),
        ("POST", "/v1/backups", Some(r#"{"name": "b1"}"#)),
    ] {
        for token in [None, Some(guess)] {
            let answer = client.request(method, path, token, body);
            assert_eq!(
                answer.as_ref().map(|a| a.0),
                Some(401),
                "{method} {path} with {token:?}: {answer:?}"
            );
        }
    }
}

/// `token new` prints the entry; appended to the config, a SIGHUP (what `ExecReload` sends)
/// enables it. Returns the token.
fn add_operator_token(
    root: &Path,
    config: &Path,
    child: &std::process::Child,
    client: &Client,
    dir: &Path,
) -> String {
    let token_file = dir.join("ops-1.token");
    let out = run(packaged(root, &[])
        .args([
            "token", "new", "--role", "operator", "--id", "ops-1", "--out",
        ])
        .arg(&token_file));
    assert!(out.status.success(), "token new: {}", text(&out.stderr));
    let entry = text(&out.stdout);
    assert!(
        entry.contains("[[api.tokens]]"),
        "token new printed {entry}"
    );
    let mut file = std::fs::read_to_string(config).expect("config");
    file.push_str(&entry);
    std::fs::write(config, file).expect("append the entry");
    signal(child, "HUP");
    let operator = std::fs::read_to_string(&token_file).expect("token");
    let operator = operator.trim().to_string();
    meterstand_testkit::eventually(
        "the token works after SIGHUP",
        Duration::from_secs(20),
        || {
            client
                .request("GET", "/metrics", Some(operator.as_str()), None)
                .map(|a| a.0)
                == Some(200)
        },
    );
    operator
}

/// One message of eight quarter-hour readings, published to the broker; waits until the
/// service counted and acknowledged it.
fn ingest_one_message(broker: &Mosquitto, client: &Client, operator: &str) {
    let start = quarters_ago(12);
    let readings: Vec<Reading> = (0..8)
        .map(|i| Reading {
            register: Register::ImportT1,
            time: jiff::Timestamp::from_second(start.as_second() + i * 900).expect("in range"),
            value: 1_000_000 + i as u64 * 25,
        })
        .collect();
    let mut publisher = Publisher::connect(broker.port, "package-publisher");
    publisher.publish(
        &format!("meters/{}/json", ean_from(26, 1).expose()),
        json_payload(&meter_id(1), &readings),
    );
    publisher.wait_acked();
    let metric = |name: &str| {
        client
            .request("GET", "/metrics", Some(operator), None)
            .and_then(|(_, body)| meterstand_testkit::http::parse_metric(&body, name))
    };
    meterstand_testkit::eventually("the message is ingested", Duration::from_secs(30), || {
        metric("meterstand_ingest_messages_total") == Some(1.0)
            && metric("meterstand_ingest_unacked_messages") == Some(0.0)
    });
    assert_eq!(metric("meterstand_ingest_readings_total"), Some(8.0));
}

#[test]
fn the_unit_verifies_clean_and_rates_2_0_or_lower() {
    let test = "the_unit_verifies_clean_and_rates_2_0_or_lower";
    let Some(deb) = deb_with(test, &[("systemd-analyze", &["--version"])]) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    unpack(&deb, &root);
    let unit = root.join(&UNIT[1..]);
    let text_of_unit = std::fs::read_to_string(&unit).expect("unit");
    let lines: Vec<&str> = text_of_unit.lines().map(str::trim).collect();
    for wanted in [
        "User=meterstand",
        "ExecStart=/usr/bin/meterstand --config /etc/meterstand/meterstand.toml run",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=meterstand",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "NoNewPrivileges=yes",
        "UMask=0077",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "TimeoutStopSec=90s",
        "LimitNOFILE=65536",
    ] {
        assert!(lines.contains(&wanted), "the unit lacks {wanted}");
    }

    // verify: the unit as installed, but with ExecStart naming the unpacked binary (verify
    // checks that the command exists, and nothing is installed under /usr/bin here).
    let dir = tmp.path().join("verify");
    std::fs::create_dir_all(&dir).expect("verify dir");
    let copy = dir.join("meterstand.service");
    let moved = text_of_unit.replace(
        "ExecStart=/usr/bin/meterstand ",
        &format!("ExecStart={} ", root.join("usr/bin/meterstand").display()),
    );
    std::fs::write(&copy, moved).expect("unit copy");
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--no-pager"])
        .arg(&copy)
        .env("SYSTEMD_LOG_COLOR", "0"));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && !said.contains("meterstand"),
        "systemd-analyze verify: {said}"
    );

    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit));
    let report = text(&out.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for meterstand.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}{}", text(&out.stderr)));
    println!("systemd-analyze security --offline=true: meterstand.service exposure {exposure}");
    assert!(exposure <= 2.0, "exposure {exposure} above 2.0:\n{report}");
}

#[test]
fn lintian_finds_no_error_in_the_package() {
    let test = "lintian_finds_no_error_in_the_package";
    let Some(deb) = deb_with(test, &[("lintian", &["--version"])]) else {
        return;
    };
    let out = run(Command::new("lintian").arg(&deb));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    println!("lintian {}:\n{said}", deb.display());
    let errors: Vec<&str> = said.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
    assert!(
        out.status.success(),
        "lintian exited {}: {said}",
        out.status
    );
}
