use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_load_and_validate() {
    let c = Config::load(None, &BTreeMap::new()).expect("defaults are valid");
    assert_eq!(c.broker.topic_prefix, "meters");
    assert_eq!(c.privacy.min_group_size, 10);
    assert_eq!(
        c.retention.interval,
        humantime::parse_duration("13months").expect("valid")
    );
    assert_eq!(c.consent.default, ConsentLevel::Standard);
    assert!(c.erasure_hold().contains(Tier::Month));
    assert_eq!(
        c.retention.audit,
        humantime::parse_duration("2years").expect("valid")
    );
}

#[test]
fn audit_retention_is_validated_like_the_other_retention_keys() {
    let c =
        Config::load(None, &env(&[("METERSTAND__RETENTION__AUDIT", "400days")])).expect("valid");
    assert_eq!(c.retention.audit, Duration::from_secs(400 * 86_400));
    let err = Config::load(None, &env(&[("METERSTAND__RETENTION__AUDIT", "1h")]))
        .expect_err("shorter than a day");
    let text = format!("{err:#}");
    assert!(
        text.contains("retention.audit") && text.contains("at least 1day"),
        "{text}"
    );
}

#[test]
fn file_then_env_override() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.toml");
    std::fs::write(
        &path,
        "[api]\nlisten = \"127.0.0.1:9000\"\n[privacy]\nmin_group_size = 12\n",
    )
    .expect("write");
    let c = Config::load(
        Some(&path),
        &env(&[
            ("METERSTAND__PRIVACY__MIN_GROUP_SIZE", "15"),
            ("OTHER", "x"),
        ]),
    )
    .expect("valid");
    assert_eq!(c.api.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(c.privacy.min_group_size, 15);
    let c =
        Config::load(None, &env(&[("METERSTAND__RETENTION__ERASURE_HOLD", "[]")])).expect("valid");
    assert!(c.erasure_hold().is_empty());
    let c =
        Config::load(None, &env(&[("METERSTAND_KEY_FILE", "/run/secrets/key")])).expect("valid");
    assert_eq!(
        c.key_file(&env(&[("METERSTAND_KEY_FILE", "/run/secrets/key")])),
        PathBuf::from("/run/secrets/key")
    );
}

#[test]
fn errors_name_key_value_and_what_is_allowed() {
    let err = Config::load(
        None,
        &env(&[("METERSTAND__CONSENT__DEFAULT", "everything")]),
    )
    .expect_err("bad consent");
    let text = err.to_string();
    assert!(
        text.contains("consent.default")
            && text.contains("everything")
            && text.contains("interval"),
        "{text}"
    );
    let err = Config::load(None, &env(&[("METERSTAND__PRIVACY__MIN_GROUP_SIZE", "1")]))
        .expect_err("too small");
    assert!(err.to_string().contains("privacy.min_group_size"));
    let err = Config::load(
        None,
        &env(&[("METERSTAND__PRIVACY__MIN_GROUP_SIZE", "ten")]),
    )
    .expect_err("not a number");
    assert!(
        err.to_string()
            .contains("METERSTAND__PRIVACY__MIN_GROUP_SIZE")
    );
    let err =
        Config::load(None, &env(&[("METERSTAND__NOPE__X", "1")])).expect_err("unknown section");
    assert!(err.to_string().contains("unknown section"));
    let err = Config::load(None, &env(&[("METERSTAND__RETENTION__DAY", "soon")]))
        .expect_err("bad duration");
    assert!(err.to_string().contains("soon"));
    let err =
        Config::load(None, &env(&[("METERSTAND__BROKER__URL", "http://x")])).expect_err("bad url");
    assert!(err.to_string().contains("broker.url"));
    let err = Config::load(None, &env(&[("METERSTAND__STORE__COMPRESSION", "gzip")]))
        .expect_err("bad compression");
    let text = err.to_string();
    assert!(
        text.contains("store.compression") && text.contains("gzip") && text.contains("lz4"),
        "{text}"
    );
    let err = Config::load(
        None,
        &env(&[("METERSTAND__PRIVACY__TIMEZONE", "Mars/Olympus")]),
    )
    .expect_err("bad zone");
    let text = err.to_string();
    assert!(
        text.contains("privacy.timezone") && text.contains("Mars/Olympus"),
        "{text}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.toml");
    // Shared subscriptions split one connection's readings over stores: the key is gone,
    // and a config that still sets it is refused rather than silently single-instance.
    std::fs::write(&path, "[broker]\nshare_group = \"ingest\"\n").expect("write");
    assert!(
        Config::load(Some(&path), &BTreeMap::new())
            .expect_err("share_group is gone")
            .to_string()
            .contains("share_group")
    );
    std::fs::write(&path, "[api]\nlisen = \"x\"\n").expect("write");
    assert!(
        Config::load(Some(&path), &BTreeMap::new())
            .expect_err("typo")
            .to_string()
            .contains("lisen")
    );
}

/// A typed value refused from a file names the key, the value, what is allowed, and the
/// file and line; from the environment, the variable.
#[test]
fn typed_refusals_name_key_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.toml");
    std::fs::write(
        &path,
        "[store]\npath = \"d\"\n\n[retention]\ninterval = \"banana\"\n",
    )
    .expect("write");
    let text = Config::load(Some(&path), &BTreeMap::new())
        .expect_err("banana")
        .to_string();
    assert!(
        text.contains("retention.interval") && text.contains("banana") && text.contains("line 5"),
        "{text}"
    );
    std::fs::write(&path, "[api]\nmax_concurrent = -3\n").expect("write");
    let text = Config::load(Some(&path), &BTreeMap::new())
        .expect_err("negative")
        .to_string();
    assert!(
        text.contains("api.max_concurrent") && text.contains("-3") && text.contains("line 2"),
        "{text}"
    );
    std::fs::write(&path, "[api]\nmax_concurrent = 0\n").expect("write");
    let text = Config::load(Some(&path), &BTreeMap::new())
        .expect_err("zero")
        .to_string();
    assert!(
        text.contains("api.max_concurrent") && text.contains("line 2"),
        "{text}"
    );
    let text = Config::load(None, &env(&[("METERSTAND__API__LISTEN", "localhost")]))
        .expect_err("not an address")
        .to_string();
    assert!(
        text.contains("api.listen") && text.contains("METERSTAND__API__LISTEN"),
        "{text}"
    );
}

/// `api.tls_cert`/`api.tls_key` both or neither, existing files, an owner-only key,
/// `client_ca` only with HTTPS, and plain HTTP off loopback only when allowed.
#[test]
fn https_keys_are_validated_and_plaintext_off_loopback_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let text = |e: &[(&str, &str)]| {
        Config::load(None, &env(e))
            .expect_err("refused")
            .to_string()
    };
    let t = text(&[("METERSTAND__API__LISTEN", "0.0.0.0:8080")]);
    assert!(
        t.contains("api.listen")
            && t.contains("0.0.0.0:8080")
            && t.contains("api.allow_plaintext")
            && t.contains("api.tls_cert"),
        "{t}"
    );
    let c = Config::load(
        None,
        &env(&[
            ("METERSTAND__API__LISTEN", "0.0.0.0:8080"),
            ("METERSTAND__API__ALLOW_PLAINTEXT", "true"),
        ]),
    )
    .expect("allowed");
    assert_eq!(c.api_base_url(), "http://127.0.0.1:8080");
    Config::load(None, &env(&[("METERSTAND__API__LISTEN", "[::1]:8080")])).expect("loopback");

    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, "x").expect("write");
    std::fs::write(&key, "x").expect("write");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (cert_s, key_s) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
    let t = text(&[("METERSTAND__API__TLS_CERT", cert_s)]);
    assert!(t.contains("api.tls_key") && t.contains("together"), "{t}");
    let t = text(&[("METERSTAND__API__TLS_KEY", key_s)]);
    assert!(t.contains("api.tls_cert") && t.contains("together"), "{t}");
    let t = text(&[("METERSTAND__API__CLIENT_CA", cert_s)]);
    assert!(t.contains("api.client_ca"), "{t}");
    let t = text(&[
        ("METERSTAND__API__TLS_CERT", "/nonexistent/c.pem"),
        ("METERSTAND__API__TLS_KEY", key_s),
    ]);
    assert!(
        t.contains("api.tls_cert") && t.contains("/nonexistent/c.pem") && t.contains("existing"),
        "{t}"
    );
    let t = text(&[
        ("METERSTAND__API__TLS_CERT", cert_s),
        ("METERSTAND__API__TLS_KEY", key_s),
    ]);
    assert!(
        t.contains("api.tls_key") && t.contains("644") && t.contains("chmod 600"),
        "{t}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let c = Config::load(
        None,
        &env(&[
            ("METERSTAND__API__LISTEN", "0.0.0.0:8443"),
            ("METERSTAND__API__TLS_CERT", cert_s),
            ("METERSTAND__API__TLS_KEY", key_s),
        ]),
    )
    .expect("https off loopback");
    assert_eq!(c.api_base_url(), "https://127.0.0.1:8443");
    // The files are not PEM: what preflight (`run`, `config check`) builds says so.
    let files = c.tls_files().expect("tls configured");
    let e = meterstand_api::tls::server_config(&files)
        .expect_err("not pem")
        .to_string();
    assert!(e.contains("api.tls_cert") && e.contains("c.pem"), "{e}");
}

#[test]
fn debug_never_shows_the_broker_password() {
    let mut c = Config::load(None, &BTreeMap::new()).expect("defaults");
    c.broker.password = Some("hunter2".into());
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn a_key_file_inside_the_data_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let key = data.join("master.key");
    std::fs::create_dir_all(&data).expect("dir");
    meterstand_pseudonym::KeyRing::generate()
        .expect("key")
        .create(&key)
        .expect("write");
    let env = env(&[
        ("METERSTAND__STORE__PATH", data.to_str().expect("utf-8")),
        ("METERSTAND_KEY_FILE", key.to_str().expect("utf-8")),
    ]);
    let c = Config::load(None, &env).expect("valid");
    let text = format!("{:#}", c.preflight(&env).expect_err("inside"));
    assert!(text.contains("inside store.path"), "{text}");
}

#[test]
fn redaction_hides_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.toml");
    let hash = format!("sha256:{}", "ab".repeat(32));
    std::fs::write(
        &path,
        format!("[broker]\npassword = \"hunter2\"\n[[api.tokens]]\nid = \"a\"\nrole = \"analyst\"\nhash = \"{hash}\"\n"),
    )
    .expect("write");
    let c = Config::load(Some(&path), &BTreeMap::new()).expect("valid");
    let shown = c.redacted_toml();
    assert!(!shown.contains("hunter2") && !shown.contains(&"ab".repeat(32)));
    assert!(shown.contains("<redacted>") && shown.contains("analyst"));
}

/// Plain MQTT only to loopback unless `broker.allow_plaintext`; the refusal names the key,
/// the value and the way out, and where the value came from.
#[test]
fn plaintext_mqtt_to_a_remote_broker_is_refused_unless_allowed() {
    let remote = [("METERSTAND__BROKER__URL", "mqtt://192.0.2.10:1883")];
    let text = Config::load(None, &env(&remote))
        .expect_err("plaintext to a remote broker")
        .to_string();
    assert!(
        text.contains("broker.url")
            && text.contains("mqtt://192.0.2.10:1883")
            && text.contains("broker.allow_plaintext")
            && text.contains("METERSTAND__BROKER__URL"),
        "{text}"
    );
    for host in ["broker.internal", "[2001:db8::1]", "10.0.0.5"] {
        let url = format!("mqtt://{host}:1883");
        assert!(
            Config::load(None, &env(&[("METERSTAND__BROKER__URL", &url)])).is_err(),
            "{url}"
        );
    }
    let allowed = [
        ("METERSTAND__BROKER__URL", "mqtt://192.0.2.10:1883"),
        ("METERSTAND__BROKER__ALLOW_PLAINTEXT", "true"),
    ];
    assert!(Config::load(None, &env(&allowed)).is_ok());
    for url in [
        "mqtt://127.0.0.1:1883",
        "mqtt://127.8.9.10:1883",
        "mqtt://[::1]:1883",
        "mqtt://localhost:1883",
        "mqtt://[::ffff:127.0.0.1]:1883",
    ] {
        Config::load(None, &env(&[("METERSTAND__BROKER__URL", url)])).expect(url);
    }
    let tls = [
        ("METERSTAND__BROKER__URL", "mqtts://192.0.2.10:8883"),
        ("METERSTAND__BROKER__CA_FILE", "/etc/meterstand/ca.pem"),
    ];
    assert!(Config::load(None, &env(&tls)).is_ok());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.toml");
    std::fs::write(&path, "[broker]\nurl = \"mqtt://192.0.2.10\"\n").expect("write");
    let text = Config::load(Some(&path), &BTreeMap::new())
        .expect_err("from the file")
        .to_string();
    assert!(text.contains("line 2"), "{text}");
}

/// `ingest.corrections` is off unless turned on.
#[test]
fn corrections_are_opt_in() {
    let c = Config::load(None, &BTreeMap::new()).expect("defaults");
    assert!(!c.ingest.corrections);
    assert!(!ingest_config_of(&c).corrections);
    let c = Config::load(None, &env(&[("METERSTAND__INGEST__CORRECTIONS", "true")])).expect("on");
    assert!(ingest_config_of(&c).corrections);
}

fn ingest_config_of(c: &Config) -> meterstand_ingest::IngestConfig {
    crate::service::ingest_config(c)
}

/// Unset is `None`, not an empty string: absent by default, set from a file or the
/// environment, and `""` (as earlier configurations wrote "unset") reads as unset.
#[test]
fn unset_values_are_none_and_the_environment_can_set_them() {
    let c = Config::load(None, &BTreeMap::new()).expect("defaults");
    assert_eq!(c.broker.username, None);
    assert_eq!(c.api.tls_cert, None);
    let c = Config::load(
        None,
        &env(&[
            ("METERSTAND__BROKER__USERNAME", "ingest"),
            ("METERSTAND__BROKER__PASSWORD", ""),
        ]),
    )
    .expect("valid");
    assert_eq!(c.broker.username.as_deref(), Some("ingest"));
    assert_eq!(c.broker.password, None);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.toml");
    std::fs::write(&path, "[broker]\nusername = \"\"\nca_file = \"\"\n").expect("write");
    let c = Config::load(Some(&path), &BTreeMap::new()).expect("old style");
    assert_eq!((c.broker.username, c.broker.ca_file), (None, None));
}

/// A token's role and ingest's write retries are typed and bounded where they are read.
#[test]
fn roles_and_write_retries_are_checked_when_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.toml");
    let hash = format!("sha256:{}", "ab".repeat(32));
    std::fs::write(
        &path,
        format!("[[api.tokens]]\nid = \"a\"\nrole = \"admin\"\nhash = \"{hash}\"\n"),
    )
    .expect("write");
    let text = Config::load(Some(&path), &BTreeMap::new())
        .expect_err("no such role")
        .to_string();
    assert!(
        text.contains("api.tokens[0].role") && text.contains("admin"),
        "{text}"
    );
    let c = Config::load(None, &env(&[("METERSTAND__INGEST__WRITE_RETRIES", "9")])).expect("ok");
    assert_eq!(crate::service::ingest_config(&c).write_retries, 9);
    let text = Config::load(None, &env(&[("METERSTAND__INGEST__WRITE_RETRIES", "1000")]))
        .expect_err("too many")
        .to_string();
    assert!(
        text.contains("ingest.write_retries") && text.contains("1000"),
        "{text}"
    );
}
