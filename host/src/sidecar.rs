//! Per-plugin settings file: `NAME.toml` beside `NAME.wasm` carries the plugin's limits and the
//! settings passed to it on every call. A change to it reloads the plugin like a change to the
//! plugin itself.
//!
//! ```toml
//! [limits]
//! timeout_ms = 200      # wall time per call (default 500)
//! memory_mib = 32       # linear memory per call (default 64)
//! output_mib = 1        # answer size per call (default 4)
//! max_children = 100    # children per parent (default 1000)
//! max_related = 100     # related objects per parent, over all its selectors (default 1000)
//!
//! [settings]            # any table; the plugin receives it as a JSON object
//! registry = "registry.example.com"
//! ```
//!
//! A policy's sidecar may also say `mode = "monitor"` (record verdicts, enforce none) or
//! `mode = "protect"` (the default), before any table.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::plugin::Limits;
use crate::policy::Mode;

/// A sidecar file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the location.
        reason: String,
    },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    mode: Option<Mode>,
    #[serde(default)]
    limits: LimitsTable,
    settings: Option<toml::Table>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsTable {
    timeout_ms: Option<u64>,
    memory_mib: Option<u64>,
    output_mib: Option<usize>,
    max_children: Option<usize>,
    max_related: Option<usize>,
}

/// What a sidecar says about one plugin.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sidecar {
    /// Per-call limits (defaults where the file is silent).
    pub limits: Limits,
    /// Settings for the plugin, as JSON.
    pub settings: Option<String>,
    /// A policy's mode (`None`: not set, protect).
    pub mode: Option<Mode>,
    /// The raw bytes, so a change can be noticed (empty when there is no file).
    pub bytes: Vec<u8>,
}

/// The sidecar path of a plugin file: `NAME.toml` beside `NAME.wasm`.
pub fn path_for(plugin: &Path) -> PathBuf {
    plugin.with_extension("toml")
}

/// Reads the sidecar of `plugin`; no file means defaults.
pub fn read(plugin: &Path) -> Result<Sidecar, SidecarError> {
    let path = path_for(plugin);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Sidecar::default()),
        Err(source) => return Err(SidecarError::Read { path, source }),
    };
    let invalid = |reason: String| SidecarError::Invalid { path: path.clone(), reason };
    let text = std::str::from_utf8(&bytes).map_err(|e| invalid(e.to_string()))?;
    let file: File = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let defaults = Limits::default();
    let limits = Limits {
        timeout: file.limits.timeout_ms.map_or(defaults.timeout, Duration::from_millis),
        memory_bytes: file.limits.memory_mib.map_or(defaults.memory_bytes, |m| m << 20),
        output_bytes: file.limits.output_mib.map_or(defaults.output_bytes, |m| m << 20),
        max_children: file.limits.max_children.unwrap_or(defaults.max_children),
        max_related: file.limits.max_related.unwrap_or(defaults.max_related),
    };
    let zero = [limits.memory_bytes, limits.output_bytes as u64, limits.max_children as u64, limits.max_related as u64];
    if limits.timeout.is_zero() || zero.contains(&0) {
        return Err(invalid("limits must be greater than zero".into()));
    }
    let settings =
        file.settings.map(|table| serde_json::to_string(&table).map_err(|e| invalid(e.to_string()))).transpose()?;
    Ok(Sidecar { limits, settings, mode: file.mode, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_limits_and_settings_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("app.wasm");
        assert_eq!(read(&plugin).unwrap(), Sidecar::default());
        std::fs::write(path_for(&plugin), "[limits]\ntimeout_ms = 200\n\n[settings]\nregistry = \"r.example\"\n")
            .unwrap();
        let sidecar = read(&plugin).unwrap();
        assert_eq!(sidecar.limits.timeout, Duration::from_millis(200));
        assert_eq!(sidecar.limits.memory_bytes, Limits::DEFAULT_MEMORY_BYTES);
        assert_eq!(sidecar.settings.as_deref(), Some(r#"{"registry":"r.example"}"#));
        assert_eq!(sidecar.mode, None);
        std::fs::write(path_for(&plugin), "mode = \"monitor\"\n[settings]\na = 1\n").unwrap();
        assert_eq!(read(&plugin).unwrap().mode, Some(Mode::Monitor));
        std::fs::write(path_for(&plugin), "mode = \"audit\"\n").unwrap();
        let err = read(&plugin).unwrap_err().to_string();
        assert!(err.contains("app.toml") && err.contains("monitor"), "{err}");
    }

    #[test]
    fn unknown_keys_and_zero_limits_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("app.wasm");
        std::fs::write(path_for(&plugin), "[limits]\ntimeout = 5\n").unwrap();
        let err = read(&plugin).unwrap_err().to_string();
        assert!(err.contains("app.toml") && err.contains("timeout"), "{err}");
        std::fs::write(path_for(&plugin), "[limits]\nmemory_mib = 0\n").unwrap();
        assert!(read(&plugin).unwrap_err().to_string().contains("greater than zero"));
    }
}
