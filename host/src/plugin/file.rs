//! Facts about a loaded plugin file: where it came from, its hash and revision, the world and
//! contract version it implements, and what loading it cost.

use std::path::PathBuf;
use std::time::Duration;

use super::cache::CacheOutcome;

/// The world a plugin component implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    /// `wasmop:plugin/operator`: exports `reconciler`.
    Operator,
    /// `wasmop:plugin/policy`: exports `reviewer`.
    Policy,
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            World::Operator => "operator",
            World::Policy => "policy",
        })
    }
}

/// Facts about one loaded plugin file.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PluginFile {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// sha256 of its bytes (hex); its first 12 characters are the plugin revision.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// The world it implements.
    pub world: World,
    /// The contract version it was built against, e.g. `0.2.0`.
    pub contract: String,
    /// Time to compile (or load from cache) and check it.
    pub load_time: Duration,
    /// Whether compiled code came from the cache.
    pub cache: CacheOutcome,
}

impl PluginFile {
    /// Short content hash identifying this build of the plugin.
    pub fn revision(&self) -> &str {
        &self.sha256[..12]
    }
}
