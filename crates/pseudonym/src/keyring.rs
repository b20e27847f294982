use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// A key version. Pseudonyms carry it so that data under different keys never mixes.
pub type KeyVersion = u16;

const HEADER: &str = "# meterstand master key ring: one line per version, the highest is current.\n\
# Keep this file outside the data directory, readable by the service user only (chmod 600).\n";

/// All master keys, by version. The highest version is the current one; older ones stay so
/// that data stored under their pseudonyms can still be found until it is re-keyed or expires.
pub struct KeyRing {
    keys: BTreeMap<KeyVersion, Zeroizing<[u8; 32]>>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} already exists; use --rotate to add a new key version to it")]
    Exists { path: PathBuf },
    #[error(
        "key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}` and start again"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "key file {path} belongs to user {owner}, not to the user running meterstand ({us}); run `chown` on it or run as its owner"
    )]
    WrongOwner { path: PathBuf, owner: u32, us: u32 },
    #[error("key file {path} line {line}: expected `v<version> <64 hex digits>`")]
    Format { path: PathBuf, line: usize },
    #[error("key file {path} holds no key")]
    Empty { path: PathBuf },
    #[error("key file {path} holds version {version} twice")]
    Duplicate { path: PathBuf, version: KeyVersion },
    #[error("no more key versions are available (the highest is {0})")]
    VersionsExhausted(KeyVersion),
    #[error("the operating system's random source failed")]
    Random,
}

impl KeyRing {
    /// A ring with one fresh random key, version 1.
    pub fn generate() -> Result<KeyRing, KeyError> {
        let mut ring = KeyRing {
            keys: BTreeMap::new(),
        };
        ring.keys.insert(1, random_key()?);
        Ok(ring)
    }

    /// A ring from given key bytes (tests and benchmarks).
    pub fn from_keys(keys: impl IntoIterator<Item = (KeyVersion, [u8; 32])>) -> KeyRing {
        KeyRing {
            keys: keys
                .into_iter()
                .map(|(v, k)| (v, Zeroizing::new(k)))
                .collect(),
        }
    }

    /// Adds a new random key as the next version and makes it current.
    pub fn rotate(&mut self) -> Result<KeyVersion, KeyError> {
        let next = self
            .current_version()
            .checked_add(1)
            .ok_or(KeyError::VersionsExhausted(self.current_version()))?;
        self.keys.insert(next, random_key()?);
        Ok(next)
    }

    pub fn current_version(&self) -> KeyVersion {
        self.keys.keys().next_back().copied().unwrap_or(0)
    }

    pub fn versions(&self) -> impl Iterator<Item = KeyVersion> + '_ {
        self.keys.keys().copied()
    }

    pub(crate) fn key(&self, version: KeyVersion) -> Option<&[u8; 32]> {
        self.keys.get(&version).map(|k| &**k)
    }

    /// Loads a key file, refusing one that group or others may read.
    pub fn load(path: &Path) -> Result<KeyRing, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        check_private(path)?;
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(read_err)?);
        let mut keys = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let format_err = || KeyError::Format {
                path: path.to_owned(),
                line: i + 1,
            };
            let (version, hex_key) = line.split_once(' ').ok_or_else(format_err)?;
            let version: KeyVersion = version
                .strip_prefix('v')
                .and_then(|v| v.parse().ok())
                .filter(|v| *v > 0)
                .ok_or_else(format_err)?;
            let mut key = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(hex_key.trim(), &mut key[..]).map_err(|_| format_err())?;
            if keys.insert(version, key).is_some() {
                return Err(KeyError::Duplicate {
                    path: path.to_owned(),
                    version,
                });
            }
        }
        if keys.is_empty() {
            return Err(KeyError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(KeyRing { keys })
    }

    /// Writes a new key file with mode 0600; refuses to overwrite one.
    pub fn create(&self, path: &Path) -> Result<(), KeyError> {
        if path.exists() {
            return Err(KeyError::Exists {
                path: path.to_owned(),
            });
        }
        self.write(path, true)
    }

    /// Replaces an existing key file (after `rotate`), atomically, keeping mode 0600.
    pub fn replace(&self, path: &Path) -> Result<(), KeyError> {
        use std::os::unix::fs::MetadataExt;
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        self.write(&tmp, true)?;
        // The new file keeps the old one's owner: a rotation run by root must not leave the
        // service's user (the package's `meterstand`) unable to read its key.
        if let Ok(old) = std::fs::metadata(path)
            && let Err(source) = std::os::unix::fs::chown(&tmp, Some(old.uid()), Some(old.gid()))
        {
            let _ = std::fs::remove_file(&tmp);
            return Err(KeyError::Write {
                path: path.to_owned(),
                source,
            });
        }
        std::fs::rename(&tmp, path).map_err(|source| KeyError::Write {
            path: path.to_owned(),
            source,
        })
    }

    fn write(&self, path: &Path, create_new: bool) -> Result<(), KeyError> {
        use std::os::unix::fs::OpenOptionsExt;
        let write_err = |source| KeyError::Write {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(create_new)
            .mode(0o600)
            .open(path)
            .map_err(write_err)?;
        let mut text = Zeroizing::new(String::from(HEADER));
        for (version, key) in &self.keys {
            text.push_str(&format!("v{version} {}\n", hex::encode(&key[..])));
        }
        file.write_all(text.as_bytes()).map_err(write_err)?;
        file.sync_all().map_err(write_err)
    }
}

fn check_private(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    // Someone else's key file (even 0600) could be swapped by its owner; /proc/self is owned
    // by the effective user of this process.
    use std::os::unix::fs::MetadataExt;
    if let Ok(us) = std::fs::metadata("/proc/self").map(|m| m.uid())
        && meta.uid() != us
    {
        return Err(KeyError::WrongOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            us,
        });
    }
    Ok(())
}

fn random_key() -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let mut key = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut key[..]).map_err(|_| KeyError::Random)?;
    Ok(key)
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .field("keys", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_load_rotate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        let ring = KeyRing::generate().expect("random");
        ring.create(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(ring.create(&path), Err(KeyError::Exists { .. })));

        let mut loaded = KeyRing::load(&path).expect("load");
        assert_eq!(loaded.current_version(), 1);
        assert_eq!(loaded.key(1), ring.key(1));
        assert_eq!(loaded.rotate().expect("rotate"), 2);
        loaded.replace(&path).expect("replace");
        let again = KeyRing::load(&path).expect("load");
        assert_eq!(again.versions().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(again.key(1), ring.key(1));
        assert_ne!(again.key(2), again.key(1));
    }

    /// A rotation run by another user (root, for the package's `meterstand` user) leaves the
    /// key file with the owner it had.
    #[test]
    fn replacing_keeps_the_key_files_owner() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        let mut ring = KeyRing::generate().expect("random");
        ring.create(&path).expect("create");
        let me = std::fs::metadata(&path).expect("meta");
        // As root the file is first given away, as the package's postinst does; otherwise
        // the test holds the owner it can hold.
        let (uid, gid) = if me.uid() == 0 {
            (54_321, 54_321)
        } else {
            (me.uid(), me.gid())
        };
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
        ring.rotate().expect("rotate");
        ring.replace(&path).expect("replace");
        let after = std::fs::metadata(&path).expect("meta");
        assert_eq!((after.uid(), after.gid()), (uid, gid));
        assert_eq!(after.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn refuses_readable_key_file_and_says_how_to_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        KeyRing::generate()
            .expect("random")
            .create(&path)
            .expect("create");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = KeyRing::load(&path).expect_err("too open");
        assert!(matches!(err, KeyError::TooOpen { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn malformed_files_name_the_line_but_not_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        std::fs::write(&path, "# c\nv1 abcdef\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = KeyRing::load(&path).expect_err("short key");
        assert!(matches!(err, KeyError::Format { line: 2, .. }));
        assert!(!err.to_string().contains("abcdef"));
        std::fs::write(&path, "# nothing\n").expect("write");
        assert!(matches!(KeyRing::load(&path), Err(KeyError::Empty { .. })));
    }

    #[test]
    fn debug_never_shows_key_material() {
        let ring = KeyRing::from_keys([(1, [0xab; 32])]);
        let text = format!("{ring:?}");
        assert!(!text.contains(&hex::encode([0xab; 32])));
        assert!(!text.to_lowercase().contains("abab"));
        assert!(text.contains("<redacted>"));
    }
}
