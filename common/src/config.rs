//! Layered configuration: a TOML file, then environment variables, then
//! `--set` flags, each overriding the one before, for every key.
//!
//! An override names a key by its path: `websocket.max_connections=5000` as
//! a flag, `O1_RELAY__WEBSOCKET__MAX_CONNECTIONS=5000` in the environment
//! (prefix, then sections separated by `__`). The value is read as TOML
//! (`5000`, `true`, `["a","b"]`), and as a plain string when it is not.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use toml::{Table, Value};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OverrideError {
    #[error("override `{0}` is not of the form section.key=value")]
    Malformed(String),
    #[error("override of `{key}`: `{parent}` is not a table")]
    NotATable { key: String, parent: String },
}

/// The layers of a configuration, lowest first: the TOML file at `path`
/// (which must exist: pass `None` for no file), the environment variables with
/// `env_prefix`, then `overrides`. Nothing is read here: the file and the
/// environment are read when the caller extracts the result.
pub fn layers(
    path: Option<&Path>,
    env_prefix: &str,
    overrides: &[String],
) -> Result<Figment, OverrideError> {
    let mut set = Table::new();
    for assignment in overrides {
        apply_override(&mut set, assignment)?;
    }
    let mut figment = Figment::new();
    if let Some(path) = path {
        figment = figment.merge(Toml::file_exact(path));
    }
    Ok(figment
        .merge(Env::prefixed(env_prefix).split("__"))
        .merge(Serialized::defaults(set)))
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

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Example {
        http: Http,
        #[serde(default)]
        tokens: Vec<String>,
    }
    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Http {
        listen: String,
        #[serde(default)]
        max: u32,
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own signature
    fn the_file_then_the_environment_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("o1.toml", "[http]\nlisten = \"file\"\nmax = 1\n")?;
            jail.set_env("O1_TEST__HTTP__MAX", "7");
            jail.set_env("O1_OTHER__HTTP__MAX", "9");
            let path = Path::new("o1.toml");
            let config: Example = layers(Some(path), "O1_TEST__", &[]).unwrap().extract()?;
            assert_eq!((config.http.listen.as_str(), config.http.max), ("file", 7));
            let flags = ["http.listen=flag".to_owned(), "tokens=[\"a\"]".to_owned()];
            let config: Example = layers(Some(path), "O1_TEST__", &flags).unwrap().extract()?;
            assert_eq!(config.http.listen, "flag");
            assert_eq!(config.tokens, vec!["a"]);
            // No file; a missing file named; a wrong type names the key.
            let config: Example = layers(None, "O1_TEST__", &flags).unwrap().extract()?;
            assert_eq!(config.http.max, 7);
            let absent = layers(Some(Path::new("absent.toml")), "O1_TEST__", &flags).unwrap();
            let error = absent.extract::<Example>().unwrap_err();
            assert!(error.to_string().contains("absent.toml"), "{error}");
            jail.set_env("O1_TEST__HTTP__MAX", "many");
            let error = layers(Some(path), "O1_TEST__", &[])
                .unwrap()
                .extract::<Example>()
                .unwrap_err();
            assert!(
                error.to_string().to_lowercase().contains("http.max"),
                "{error}"
            );
            Ok(())
        });
    }
}
