//! Daemon configuration (`cloud-server serve --config server.toml`).
//!
//! The file names the models to load and every limit the daemon enforces. Unknown keys are an
//! error (a typo in a limit must not silently fall back to a default), and every limit has a
//! conservative default so a minimal file is just an address and a model:
//!
//! ```toml
//! listen = "127.0.0.1:7878"
//!
//! [[model]]
//! id = "minionn-sq"
//! path = "cloud-server/models/minionn-sq.onnx"
//!
//! [limits]            # all optional
//! max_sessions = 64           # concurrent connections; more are refused at accept
//! idle_timeout_secs = 30      # a connection silent this long is closed
//! session_timeout_secs = 600  # hard cap on one connection's lifetime
//! ticket_ttl_secs = 86400     # unused tickets expire
//! max_ticket_bytes = 536870912
//! max_tickets = 100000
//! max_tickets_per_session = 256
//! ```
//!
//! The client always learns the logits: revealing only the arg-max label (DESIGN §2 mentions it
//! as an option) needs a secure comparison protocol that this system does not implement, so there
//! is deliberately no such switch.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::tickets::TicketLimits;

/// One model to load.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Identifier clients ask for (must fit core-nostd's `MAX_MODEL_ID`).
    pub id: String,
    /// ONNX file; relative paths are resolved against the config file's directory.
    pub path: PathBuf,
}

/// Resource limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_sessions: usize,
    pub idle_timeout_secs: u64,
    pub session_timeout_secs: u64,
    pub ticket_ttl_secs: u64,
    pub max_ticket_bytes: usize,
    pub max_tickets: usize,
    pub max_tickets_per_session: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 64,
            idle_timeout_secs: 30,
            session_timeout_secs: 600,
            ticket_ttl_secs: 24 * 3600,
            max_ticket_bytes: 512 << 20,
            max_tickets: 100_000,
            max_tickets_per_session: 256,
        }
    }
}

impl Limits {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn session_timeout(&self) -> Duration {
        Duration::from_secs(self.session_timeout_secs)
    }

    pub fn tickets(&self) -> TicketLimits {
        TicketLimits {
            ttl: Duration::from_secs(self.ticket_ttl_secs),
            max_bytes: self.max_ticket_bytes,
            max_tickets: self.max_tickets,
        }
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    #[serde(rename = "model")]
    pub models: Vec<ModelEntry>,
    #[serde(default)]
    pub limits: Limits,
}

/// Why a configuration is unusable.
#[derive(Debug)]
pub enum ConfigError {
    Read { path: PathBuf, source: std::io::Error },
    Parse(toml::de::Error),
    Invalid(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Read { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            ConfigError::Parse(e) => write!(f, "invalid configuration: {e}"),
            ConfigError::Invalid(why) => write!(f, "invalid configuration: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ServerConfig {
    /// Parse and check a configuration text; relative model paths are resolved against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<ServerConfig, ConfigError> {
        let mut config: ServerConfig = toml::from_str(text).map_err(ConfigError::Parse)?;
        for m in &mut config.models {
            if m.path.is_relative() {
                m.path = base.join(&m.path);
            }
        }
        config.check()?;
        Ok(config)
    }

    /// Read and check a configuration file.
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        ServerConfig::from_toml(&text, base)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |s: String| Err(ConfigError::Invalid(s));
        if self.models.is_empty() {
            return invalid("at least one [[model]] is required".into());
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.id.is_empty() || m.id.len() > core_nostd::arch::MAX_MODEL_ID {
                return invalid(format!(
                    "model id {:?} must have 1 to {} bytes",
                    m.id,
                    core_nostd::arch::MAX_MODEL_ID
                ));
            }
            if self.models[..i].iter().any(|o| o.id == m.id) {
                return invalid(format!("model id {:?} appears twice", m.id));
            }
        }
        let l = &self.limits;
        if l.max_sessions == 0
            || l.idle_timeout_secs == 0
            || l.session_timeout_secs == 0
            || l.ticket_ttl_secs == 0
        {
            return invalid("limits must be positive".into());
        }
        if l.max_tickets == 0 || l.max_ticket_bytes == 0 || l.max_tickets_per_session == 0 {
            return invalid("ticket limits must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file_gets_defaults_and_resolves_paths() {
        let c = ServerConfig::from_toml(
            "listen = \"127.0.0.1:0\"\n[[model]]\nid = \"m\"\npath = \"m.onnx\"\n",
            Path::new("/etc/pi"),
        )
        .unwrap();
        assert_eq!(c.models[0].path, PathBuf::from("/etc/pi/m.onnx"));
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let base = Path::new(".");
        let typo =
            "listen = \"127.0.0.1:0\"\n[[model]]\nid = \"m\"\npath = \"m\"\n[limits]\nmax_sesions = 3\n";
        assert!(matches!(ServerConfig::from_toml(typo, base), Err(ConfigError::Parse(_))));
        let dup = "listen = \"127.0.0.1:0\"\n[[model]]\nid = \"m\"\npath = \"a\"\n[[model]]\nid = \"m\"\npath = \"b\"\n";
        assert!(matches!(ServerConfig::from_toml(dup, base), Err(ConfigError::Invalid(_))));
        let zero =
            "listen = \"127.0.0.1:0\"\n[[model]]\nid = \"m\"\npath = \"a\"\n[limits]\nmax_sessions = 0\n";
        assert!(matches!(ServerConfig::from_toml(zero, base), Err(ConfigError::Invalid(_))));
        let output =
            "listen = \"127.0.0.1:0\"\n[[model]]\nid = \"m\"\npath = \"a\"\n[output]\nreveal = \"label\"\n";
        assert!(
            matches!(ServerConfig::from_toml(output, base), Err(ConfigError::Parse(_))),
            "no label-only mode"
        );
    }
}
