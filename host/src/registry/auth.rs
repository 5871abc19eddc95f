//! Registry credentials: a docker config file (`~/.docker/config.json`), a pull Secret's
//! `.dockerconfigjson`, or a username and password. Printing them never shows a secret.
//!
//! Caveat: docker credential helpers (`credsStore`, `credHelpers`) are not run; only the
//! `auths` entries (as `docker login` writes without a helper, and as pull Secrets hold) count.

use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;

/// Where a registry's credentials come from.
#[derive(Clone)]
pub enum Credentials {
    /// None: anonymous access.
    Anonymous,
    /// A username and password for every registry.
    Basic {
        /// The username.
        username: String,
        /// The password or token.
        password: String,
    },
    /// The `auths` of a docker config file, read at each use; a missing file is anonymous.
    DockerConfigFile(PathBuf),
    /// The `auths` of a docker config JSON document (a pull Secret's `.dockerconfigjson`),
    /// named by what it came from.
    DockerConfigJson {
        /// Where it came from, for errors (e.g. `Secret wasmop/regcred`).
        origin: String,
        /// The document.
        json: Vec<u8>,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => write!(f, "Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::DockerConfigFile(path) => write!(f, "DockerConfigFile({})", path.display()),
            Credentials::DockerConfigJson { origin, .. } => write!(f, "DockerConfigJson({origin})"),
        }
    }
}

/// Credentials cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The docker config file exists but cannot be read.
    #[error("cannot read docker config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The document is not a docker config.
    #[error(
        "{origin} is not a docker config ({message}); it needs {{\"auths\": {{\"REGISTRY\": {{\"auth\": \"BASE64(USER:PASSWORD)\"}}}}}}"
    )]
    Invalid {
        /// Where it came from.
        origin: String,
        /// What is wrong.
        message: String,
    },
}

impl Credentials {
    /// The docker config file docker itself reads: `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`.
    pub fn docker_default() -> Credentials {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker")));
        match dir {
            Some(dir) => Credentials::DockerConfigFile(dir.join("config.json")),
            None => Credentials::Anonymous,
        }
    }

    /// What to send to `registry` (HOST or HOST:PORT).
    pub fn for_registry(&self, registry: &str) -> Result<RegistryAuth, CredentialsError> {
        match self {
            Credentials::Anonymous => Ok(RegistryAuth::Anonymous),
            Credentials::Basic { username, password } => Ok(RegistryAuth::Basic(username.clone(), password.clone())),
            Credentials::DockerConfigFile(path) => match std::fs::read(path) {
                Ok(json) => lookup(&path.display().to_string(), &json, registry),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RegistryAuth::Anonymous),
                Err(source) => Err(CredentialsError::Read { path: path.clone(), source }),
            },
            Credentials::DockerConfigJson { origin, json } => lookup(origin, json, registry),
        }
    }
}

/// The `auths` entry of `registry` in a docker config document, else anonymous.
fn lookup(origin: &str, json: &[u8], registry: &str) -> Result<RegistryAuth, CredentialsError> {
    let invalid = |message: String| CredentialsError::Invalid { origin: origin.to_string(), message };
    let config: serde_json::Value = serde_json::from_slice(json).map_err(|e| invalid(e.to_string()))?;
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let entry = auths
        .iter()
        .find(|(key, _)| host_of(key) == registry || (is_docker_hub(registry) && is_docker_hub(host_of(key))));
    let Some((key, entry)) = entry else { return Ok(RegistryAuth::Anonymous) };
    if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| invalid(format!("auths.{key}.auth is not base64: {e}")))?;
        let decoded = String::from_utf8(decoded).map_err(|_| invalid(format!("auths.{key}.auth is not UTF-8")))?;
        let Some((username, password)) = decoded.split_once(':') else {
            return Err(invalid(format!("auths.{key}.auth is not USER:PASSWORD")));
        };
        return Ok(RegistryAuth::Basic(username.to_string(), password.to_string()));
    }
    match (entry.get("username").and_then(|u| u.as_str()), entry.get("password").and_then(|p| p.as_str())) {
        (Some(username), Some(password)) => Ok(RegistryAuth::Basic(username.to_string(), password.to_string())),
        _ => Ok(RegistryAuth::Anonymous),
    }
}

/// The host of an `auths` key, which may be a URL (`https://index.docker.io/v1/`).
fn host_of(key: &str) -> &str {
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

fn is_docker_hub(host: &str) -> bool {
    matches!(host, "docker.io" | "index.docker.io" | "registry-1.docker.io")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(auth: RegistryAuth) -> Option<(String, String)> {
        match auth {
            RegistryAuth::Basic(u, p) => Some((u, p)),
            _ => None,
        }
    }

    #[test]
    fn docker_config_entries_match_by_host_and_decode() {
        let json = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
            "127.0.0.1:5000": {"username": "me", "password": "pw"}
        }}"#;
        let creds = Credentials::DockerConfigJson { origin: "Secret wasmop/regcred".into(), json: json.to_vec() };
        assert_eq!(basic(creds.for_registry("docker.io").unwrap()), Some(("hub".into(), "secret".into())));
        assert_eq!(basic(creds.for_registry("127.0.0.1:5000").unwrap()), Some(("me".into(), "pw".into())));
        assert!(basic(creds.for_registry("ghcr.io").unwrap()).is_none());
    }

    #[test]
    fn a_broken_document_names_its_origin_and_printing_hides_the_password() {
        let creds = Credentials::DockerConfigJson {
            origin: "Secret wasmop/regcred".into(),
            json: b"{\"auths\": {\"h\": {\"auth\": \"!!\"}}}".to_vec(),
        };
        let error = creds.for_registry("h").unwrap_err().to_string();
        assert!(error.contains("Secret wasmop/regcred") && error.contains("base64"), "{error}");
        let basic = Credentials::Basic { username: "me".into(), password: "hunter2".into() };
        assert!(!format!("{basic:?}").contains("hunter2"));
    }

    #[test]
    fn a_missing_docker_config_file_is_anonymous() {
        let creds = Credentials::DockerConfigFile(PathBuf::from("/nonexistent/wasmop/config.json"));
        assert!(matches!(creds.for_registry("h").unwrap(), RegistryAuth::Anonymous));
    }
}
