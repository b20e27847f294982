use super::revoke::Seen;
use super::*;

#[test]
fn revoking_removes_exactly_that_entry_and_keeps_comments() {
    let text = "# ours\n[api]\nlisten = \"127.0.0.1:8080\"\n\n# the dashboard\n[[api.tokens]]\nid = \"a-1\"\nrole = \"analyst\"\nhash = \"sha256:00\"\n\n[[api.tokens]]\nid = \"crm-1\" # the CRM\nrole = \"crm\"\nhash = \"sha256:11\"\n\n[log]\nlevel = \"info\" # keep\n";
    let out = remove_token(text, "a-1").expect("removed");
    assert!(
        !out.contains("a-1") && !out.contains("the dashboard"),
        "{out}"
    );
    assert!(
        out.contains("id = \"crm-1\" # the CRM") && out.contains("# ours"),
        "{out}"
    );
    assert!(
        out.contains("level = \"info\" # keep") && out.contains("listen"),
        "{out}"
    );
    let parsed: toml::Table = out.parse().expect("still TOML");
    assert_eq!(parsed["api"]["tokens"].as_array().map(Vec::len), Some(1));
    let e = remove_token(&out, "nobody").expect_err("no such entry");
    assert!(e.to_string().contains("nobody"), "{e}");
    // A line that merely mentions the id is not an entry.
    let e = remove_token("# id = \"a-1\"\n[api]\n", "a-1").expect_err("no entry");
    assert!(e.to_string().contains("a-1"), "{e}");
    assert!(remove_token("[api\n", "a-1").is_err());
}

#[test]
fn revoking_works_on_inline_and_dotted_forms_too() {
    let text = "[api]\ntokens = [\n  { id = \"a-1\", role = \"analyst\", hash = \"sha256:00\" },\n  { id = \"b-1\", role = \"crm\", hash = \"sha256:11\" },\n]\n";
    let out = remove_token(text, "a-1").expect("removed");
    let parsed: toml::Table = out.parse().expect("still TOML");
    let tokens = parsed["api"]["tokens"].as_array().expect("array");
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["id"].as_str(), Some("b-1"));
    // Only [[api.tokens]] entries; the last one removed leaves no tokens.
    let text = "[[api.tokens]]\nid = \"a-1\"\nrole = \"analyst\"\nhash = \"sha256:00\"\n";
    let out = remove_token(text, "a-1").expect("removed");
    let parsed: toml::Table = out.parse().expect("still TOML");
    assert!(
        parsed
            .get("api")
            .and_then(|a| a.get("tokens"))
            .and_then(|t| t.as_array())
            .is_none_or(|t| t.is_empty()),
        "{out}"
    );
}

#[test]
fn the_default_connection_cap_leaves_rocksdb_its_share_of_the_file_limit() {
    assert_eq!(max_connections(0, 1024), 384);
    assert_eq!(max_connections(0, 4096), 1920);
    assert_eq!(max_connections(0, 65_536), 4096);
    assert_eq!(max_connections(0, u64::MAX), 4096);
    assert_eq!(max_connections(0, 100), 16);
    assert_eq!(max_connections(300, 1024), 300, "configured wins");
    // Whatever the limit, connections never take more than half of what is not reserved.
    for limit in [512u64, 1024, 2048, 8192, 20_000] {
        let cap = max_connections(0, limit) as u64;
        assert!(cap * 2 <= limit - RESERVED_FDS, "{limit}: {cap}");
    }
}

#[test]
fn metrics_are_read_as_the_service_writes_them() {
    let text = "# HELP meterstand_token_table_generation Token tables\n\
                # TYPE meterstand_token_table_generation gauge\n\
                meterstand_token_table_generation 3\n\
                meterstand_token_table_info{fingerprint=\"0011223344556677\"} 1\n\
                meterstand_token_reload_failures_total 0\n\
                meterstand_token_table_generation_other 9\n";
    assert_eq!(
        Seen::parse(text),
        Seen {
            generation: Some(3),
            fingerprint: Some("0011223344556677".into()),
            failures: Some(0),
        }
    );
    assert_eq!(Seen::parse(""), Seen::default());
    let shown = Seen::parse(text).to_string();
    assert!(
        shown.contains("generation 3") && shown.contains("0011223344556677"),
        "{shown}"
    );
}

/// What a failed reload still finds in the file: entries by id, role and hash, and token
/// files that still hold the same token; an unreadable file or one that is not TOML gives
/// nothing to keep.
#[test]
fn a_failed_reload_keeps_only_entries_still_in_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let token_path = dir.path().join("crm.token");
    std::fs::write(&token_path, "crm-secret\n").expect("token");
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let config = dir.path().join("m.toml");
    let analyst = meterstand_api::hash_token("analyst-secret");
    std::fs::write(
        &config,
        format!(
            "[[api.tokens]]\nid = \"a-1\"\nrole = \"analyst\"\nhash = \"{analyst}\"\n\
             [[api.tokens]]\nid = \"c-1\"\nrole = \"crm\"\nfile = \"{}\"\n\
             [api]\nlisten = \"not an address\"\n",
            token_path.display()
        ),
    )
    .expect("config");
    let entries = entries_in_file(Some(&config)).expect("readable");
    let identity = |id: &str, role| Identity {
        id: id.into(),
        role,
    };
    let hash =
        |token: &str| meterstand_api::parse_hash(&meterstand_api::hash_token(token)).expect("hash");
    let grants = |h: [u8; 32], i: Identity| entries.iter().any(|e| e.grants(&h, &i));
    use meterstand_api::Role;
    assert!(grants(
        hash("analyst-secret"),
        identity("a-1", Role::Analyst)
    ));
    assert!(!grants(
        hash("analyst-secret"),
        identity("a-1", Role::Operator)
    ));
    assert!(!grants(
        hash("analyst-other"),
        identity("a-1", Role::Analyst)
    ));
    assert!(grants(hash("crm-secret"), identity("c-1", Role::Crm)));
    // A token file open to others no longer vouches for its token.
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert!(!grants(hash("crm-secret"), identity("c-1", Role::Crm)));
    std::fs::write(&config, "[[api.tokens]\n").expect("config");
    assert!(entries_in_file(Some(&config)).is_err());
    assert!(entries_in_file(Some(&dir.path().join("missing.toml"))).is_err());
}
