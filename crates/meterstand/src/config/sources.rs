//! Where configuration comes from: merging the defaults, the file and the environment, and
//! finding which of them set a key (for refusals that name the file and line or the variable).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ENV_PREFIX;

/// Whether `path` lies inside `dir`, compared on absolute, lexically normalised paths.
pub fn inside(path: &Path, dir: &Path) -> bool {
    let absolute = |p: &Path| {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        let mut out = PathBuf::new();
        for part in p.components() {
            match part {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                std::path::Component::CurDir => {}
                other => out.push(other),
            }
        }
        out
    };
    absolute(path).starts_with(absolute(dir))
}

/// Where the value of `key` (`section.key`, maybe with `[i]`) came from: an environment
/// variable, a line of the config file, or nothing (the defaults).
pub(super) fn origin_of(
    key: &str,
    file: Option<&(&Path, String)>,
    env: &BTreeMap<String, String>,
) -> String {
    let mut parts = key.split('.');
    let (Some(section), Some(leaf)) = (parts.next(), parts.next()) else {
        return String::new();
    };
    let leaf = leaf.split('[').next().unwrap_or(leaf);
    let var = format!(
        "{ENV_PREFIX}{}__{}",
        section.to_ascii_uppercase(),
        leaf.to_ascii_uppercase()
    );
    if env.contains_key(&var) {
        return format!(" (from {var})");
    }
    let Some((path, text)) = file else {
        return String::new();
    };
    let mut current = "";
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            current = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
        } else if current == section
            && line
                .split('=')
                .next()
                .is_some_and(|k| k.trim() == leaf && line.contains('='))
        {
            return format!(" ({} line {})", path.display(), n + 1);
        }
    }
    String::new()
}

pub(super) fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Reads an environment value in the type of the default it replaces.
pub(super) fn parse_env_value(existing: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    match existing {
        toml::Value::String(_) => Ok(toml::Value::String(raw.to_string())),
        toml::Value::Boolean(_) => raw
            .parse()
            .map(toml::Value::Boolean)
            .map_err(|_| format!("{raw:?} is not true or false")),
        toml::Value::Integer(_) => raw
            .parse()
            .map(toml::Value::Integer)
            .map_err(|_| format!("{raw:?} is not a whole number")),
        _ => format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .ok_or_else(|| format!("{raw:?} is not a TOML value (e.g. [\"month\"])")),
    }
}
