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
    match line_of(text, key) {
        Some(line) => format!(" ({} line {line})", path.display()),
        None => String::new(),
    }
}

/// The line (from 1) of `text` where `key` is set, the key as `serde_path_to_error` writes
/// it (`api.listen`, `api.tokens[1].role`); `None` unless the file sets it (a value from the
/// defaults has no line). Tables, inline tables, arrays of tables, arrays and dotted keys
/// alike, as TOML parses them.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut node = Node::Item(doc.as_item());
    let mut span = None;
    for part in key.split('.') {
        let (name, indices) = part.split_at(part.find('[').unwrap_or(part.len()));
        let mut steps: Vec<Step> = Vec::new();
        if !name.is_empty() {
            steps.push(Step::Key(name));
        }
        for index in indices.split(['[', ']']).filter(|s| !s.is_empty()) {
            steps.push(Step::Index(index.parse().ok()?));
        }
        for step in steps {
            let (found, next) = node.step(step)?;
            span = found.or(span);
            node = next;
        }
    }
    let start = span?.start;
    Some(text.get(..start)?.matches('\n').count() + 1)
}

/// A place in a parsed TOML document, on the way down a key path.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a toml_edit::Item),
    Table(&'a toml_edit::Table),
    Value(&'a toml_edit::Value),
}

#[derive(Clone, Copy)]
enum Step<'k> {
    Key(&'k str),
    Index(usize),
}

impl<'a> Node<'a> {
    /// The child a step leads to, with the span of what names it in the text (the key, the
    /// array element, the `[[table]]` header).
    fn step(self, step: Step<'_>) -> Option<(Option<std::ops::Range<usize>>, Node<'a>)> {
        use toml_edit::{Item, Value};
        match (self, step) {
            (Node::Item(Item::Table(t)) | Node::Table(t), Step::Key(k)) => t
                .get_key_value(k)
                .map(|(key, item)| (key.span(), Node::Item(item))),
            (
                Node::Item(Item::Value(Value::InlineTable(t))) | Node::Value(Value::InlineTable(t)),
                Step::Key(k),
            ) => t
                .get_key_value(k)
                .map(|(key, item)| (key.span(), Node::Item(item))),
            (Node::Item(Item::ArrayOfTables(tables)), Step::Index(i)) => {
                tables.get(i).map(|t| (t.span(), Node::Table(t)))
            }
            (
                Node::Item(Item::Value(Value::Array(values))) | Node::Value(Value::Array(values)),
                Step::Index(i),
            ) => values.get(i).map(|v| (v.span(), Node::Value(v))),
            _ => None,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::line_of;

    #[test]
    fn lines_are_found_through_tables_arrays_and_dotted_keys() {
        let text = "# top\n[api]\nlisten = \"x\"\n\n[[api.tokens]]\nid = \"a\"\nrole = \"analyst\"\n\n[[api.tokens]]\nid = \"b\"\nrole = \"nobody\"\n\n[store]\nmemory = \"1GiB\"\nlog.level = \"x\"\ninline = { a = 1, b = [1, 2,\n 3] }\n";
        assert_eq!(line_of(text, "api.listen"), Some(3));
        assert_eq!(line_of(text, "api.tokens[1].role"), Some(11));
        assert_eq!(line_of(text, "api.tokens[0].id"), Some(6));
        assert_eq!(line_of(text, "store.memory"), Some(14));
        assert_eq!(line_of(text, "store.log.level"), Some(15));
        assert_eq!(line_of(text, "store.inline.b[2]"), Some(17));
        // Not set in the file (a default): no line, even where its section is.
        assert_eq!(line_of(text, "api.audit_log"), None);
        assert_eq!(line_of(text, "api.tokens[2].id"), None);
        assert_eq!(line_of(text, "retention.day"), None);
        // A commented-out key is not a key.
        assert_eq!(line_of("[api]\n# listen = 1\n", "api.listen"), None);
        assert_eq!(line_of("[api\n", "api.listen"), None);
    }
}
