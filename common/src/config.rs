//! Layered configuration: a TOML file, then environment variables, then
//! `--set` flags, each overriding the one before, for every key.
//!
//! An override names a key by its path: `websocket.max_connections=5000` as
//! a flag, `O1_RELAY__WEBSOCKET__MAX_CONNECTIONS=5000` in the environment
//! (prefix, then sections separated by `__`). The value is read as TOML
//! (`5000`, `true`, `["a","b"]`), and as a plain string when it is not.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::{Table, Value};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OverrideError {
    #[error("override `{0}` is not of the form section.key=value")]
    Malformed(String),
    #[error("override of `{key}`: `{parent}` is not a table")]
    NotATable { key: String, parent: String },
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    #[error(transparent)]
    Override(#[from] OverrideError),
}

/// Loads `T` from the TOML file at `path` (a missing file is fine unless
/// `required`), then the environment variables with `env_prefix`, then
/// `overrides`. Errors name the file and the key.
pub fn load<T: DeserializeOwned>(
    path: Option<&Path>,
    required: bool,
    env_prefix: &str,
    overrides: &[String],
) -> Result<T, LoadError> {
    let mut table = Table::new();
    let mut source_name = "defaults".to_owned();
    if let Some(path) = path {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                table = text.parse::<Table>().map_err(|e| LoadError::Parse {
                    source_name: path.display().to_string(),
                    message: e.to_string().trim().to_owned(),
                })?;
                source_name = path.display().to_string();
            }
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LoadError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    let env = env_overrides(env_prefix, std::env::vars());
    for assignment in env.iter().chain(overrides) {
        apply_override(&mut table, assignment)?;
    }
    table
        .try_into()
        .map_err(|e: toml::de::Error| LoadError::Parse {
            source_name,
            message: e.to_string().trim().to_owned(),
        })
}

/// Applies one `path=value` override to `table`.
pub fn apply_override(table: &mut Table, assignment: &str) -> Result<(), OverrideError> {
    let Some((path, raw)) = assignment.split_once('=') else {
        return Err(OverrideError::Malformed(assignment.to_owned()));
    };
    let path = path.trim();
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(OverrideError::Malformed(assignment.to_owned()));
    }
    let value = parse_value(raw.trim());
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap_or(path);
    let mut current = table;
    let mut walked = String::new();
    for part in parts {
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(part);
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        current = match entry {
            Value::Table(inner) => inner,
            _ => {
                return Err(OverrideError::NotATable {
                    key: path.to_owned(),
                    parent: walked,
                });
            }
        };
    }
    current.insert(last.to_owned(), value);
    Ok(())
}

fn parse_value(raw: &str) -> Value {
    let document = format!("v = {raw}");
    match document.parse::<Table>() {
        Ok(mut parsed) => parsed
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_owned())),
        Err(_) => Value::String(raw.to_owned()),
    }
}

/// Turns environment variables with `prefix` (e.g. `O1_RELAY__`) into
/// overrides: `O1_RELAY__HTTP__LISTEN=x` → `http.listen=x`.
pub fn env_overrides(
    prefix: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Vec<String> {
    let mut overrides: Vec<String> = vars
        .into_iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix(prefix)?;
            let path = rest.to_ascii_lowercase().replace("__", ".");
            Some(format!("{path}={value}"))
        })
        .collect();
    overrides.sort();
    overrides
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_table() {
        let base: Table = "[http]\nlisten = \"a\"\n".parse().unwrap();
        let cases = [
            (
                "http.listen=127.0.0.1:9",
                "[http]\nlisten = \"127.0.0.1:9\"\n",
            ),
            (
                "websocket.max_connections=5",
                "[http]\nlisten = \"a\"\n\n[websocket]\nmax_connections = 5\n",
            ),
            ("http.tls=true", "[http]\nlisten = \"a\"\ntls = true\n"),
            (
                "tokens=[\"x\",\"y\"]",
                "tokens = [\"x\", \"y\"]\n\n[http]\nlisten = \"a\"\n",
            ),
        ];
        for (assignment, expected) in cases {
            let mut table = base.clone();
            apply_override(&mut table, assignment).unwrap();
            assert_eq!(toml::to_string(&table).unwrap(), expected, "{assignment}");
        }
        for bad in ["novalue", "=3", "a..b=1"] {
            assert!(apply_override(&mut base.clone(), bad).is_err(), "{bad}");
        }
        assert!(matches!(
            apply_override(&mut base.clone(), "http.listen.port=1"),
            Err(OverrideError::NotATable { .. })
        ));
    }

    #[test]
    fn environment_names_map_to_paths() {
        let vars = [
            ("O1_RELAY__HTTP__LISTEN".to_owned(), "0.0.0.0:1".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        assert_eq!(
            env_overrides("O1_RELAY__", vars),
            vec!["http.listen=0.0.0.0:1"]
        );
    }
}
