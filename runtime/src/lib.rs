//! What every o1 binary (`o1-agent`, `o1-relay`, `o1`) does around its
//! work, in one place: load the layered configuration, log to stderr, start
//! the tokio runtime, and stop on SIGTERM or SIGINT. This is where their
//! process I/O lives, so `o1-common` stays pure.

use std::path::Path;

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Override(#[from] o1_common::config::OverrideError),
    /// Names the file or variable and the key.
    #[error("{0}")]
    Layers(Box<figment::Error>),
}

/// Loads `T` from the TOML file at `path` (an absent file is fine unless
/// `required`), then the environment variables with `env_prefix`, then the
/// `--set` `overrides` (see [`o1_common::config`]).
pub fn load_config<T: DeserializeOwned>(
    path: Option<&Path>,
    required: bool,
    env_prefix: &str,
    overrides: &[String],
) -> Result<T, LoadError> {
    // An absent file that is not required is no layer at all.
    let path = path.filter(|path| required || path.exists());
    o1_common::config::layers(path, env_prefix, overrides)?
        .extract()
        .map_err(|e| LoadError::Layers(Box::new(e)))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), in colour only
/// on a terminal.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The tokio runtime: one thread (the agent, light on its host) or one
/// worker per core (the relay).
pub fn runtime(multi_thread: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build()
}

/// A token cancelled at the first SIGTERM or SIGINT. Call within the
/// runtime.
pub fn stop_on_signals() -> CancellationToken {
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        on_signal.cancel();
    });
    stop
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Example {
        #[serde(default)]
        port: u16,
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own signature
    fn an_absent_file_is_fine_unless_required() {
        figment::Jail::expect_with(|jail| {
            let absent = Some(Path::new("absent.toml"));
            let config: Example = load_config(absent, false, "O1_X__", &[]).unwrap();
            assert_eq!(config.port, 0);
            let error = load_config::<Example>(absent, true, "O1_X__", &[]).unwrap_err();
            assert!(error.to_string().contains("absent.toml"), "{error}");
            jail.create_file("present.toml", "port = 7")?;
            let config: Example =
                load_config(Some(Path::new("present.toml")), false, "O1_X__", &[]).unwrap();
            assert_eq!(config.port, 7);
            let bad = ["port".to_owned()];
            assert!(matches!(
                load_config::<Example>(absent, false, "O1_X__", &bad),
                Err(LoadError::Override(_))
            ));
            Ok(())
        });
    }
}
