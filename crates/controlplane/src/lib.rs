//! A real Kubernetes control plane for wasmop's tests and `wasmop dev --control-plane real`, in
//! the spirit of kubebuilder's envtest, one step further: etcd, kube-apiserver and
//! kube-controller-manager (so garbage collection, Deployments and ReplicaSets are the real
//! controllers), plus kube-scheduler and kwok (fake nodes whose pods turn Running and Ready), so
//! Deployments become Available without kubelets.
//!
//! The binaries are built from source by `make controlplane` (`tools/controlplane`), which pins
//! every version. Each start generates a CA, a serving certificate, an admin client certificate
//! (`system:masters`) and a ServiceAccount signing key, runs the API server with
//! `--authorization-mode=Node,RBAC` on free loopback ports, and waits for `/readyz`, the
//! controller manager (the `default` ServiceAccount exists) and the fake node (Ready).
//! Everything is torn down on drop, even after a panic; see [`process`] for how orphans are
//! prevented when the control plane lives in a `static` ([`ControlPlane::shared`]).

pub mod pki;
pub mod process;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::pki::Pki;
use crate::process::Supervised;

/// Environment variable naming the directory of the control-plane binaries.
pub const BIN_DIR_ENV: &str = "WASMOP_CONTROLPLANE_BIN";

/// The binaries `make controlplane` builds.
pub const BINARIES: [&str; 5] = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"];

/// kwok's stages (how fake nodes and pods progress), written beside the binaries.
pub const KWOK_STAGES: &str = "kwok-stages.yaml";

/// Name of the fake node kwok manages.
pub const NODE_NAME: &str = "kwok-node-0";

/// Failure to start the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A binary is missing: the control plane has not been built.
    #[error("{binary} not found in {dir}: build the control plane with `make controlplane` (or set {BIN_DIR_ENV})")]
    MissingBinary {
        /// Which binary.
        binary: &'static str,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// A file or directory operation failed.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// Generating a key or certificate failed.
    #[error("cannot generate the {step}: {source}")]
    Pki {
        /// Which key or certificate.
        step: &'static str,
        /// Why.
        source: rcgen::Error,
    },
    /// A process could not be started.
    #[error("cannot start {name}: {reason}")]
    Spawn {
        /// Which process.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// A process exited while the control plane was starting.
    #[error("{name} exited during start-up ({status}); last lines of {log}:\n{tail}")]
    Exited {
        /// Which process.
        name: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// A start-up step did not finish in time.
    #[error("timed out after {after:?} waiting for {what}; the logs are in {dir}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
        /// The control plane's directory (process logs).
        dir: PathBuf,
    },
    /// A client for the control plane could not be built.
    #[error("cannot build a client for the control plane: {0}")]
    Client(String),
}

impl Error {
    /// Whether a process failed because a port picked as free was taken meanwhile.
    fn is_port_clash(&self) -> bool {
        matches!(self, Error::Exited { tail, .. } if tail.contains("address already in use"))
    }
}

/// How to start a control plane.
#[derive(Clone, Debug)]
#[must_use]
pub struct Builder {
    bin_dir: PathBuf,
    nodes: bool,
    timeout: Duration,
    feature_gates: Option<String>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder { bin_dir: default_bin_dir(), nodes: true, timeout: Duration::from_secs(120), feature_gates: None }
    }
}

/// `$WASMOP_CONTROLPLANE_BIN`, else `target/controlplane/bin` of this workspace (where
/// `make controlplane` links the cached build).
pub fn default_bin_dir() -> PathBuf {
    match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/controlplane/bin"),
    }
}

impl Builder {
    /// Where the binaries are (default: [`default_bin_dir`]).
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = dir.into();
        self
    }

    /// Whether to run kube-scheduler and kwok with one fake node, so that pods are scheduled and
    /// become Ready (default: true).
    pub fn nodes(mut self, nodes: bool) -> Self {
        self.nodes = nodes;
        self
    }

    /// kube-apiserver's `--feature-gates` (e.g. `ShardedListAndWatch=true`; default: none).
    pub fn feature_gates(mut self, gates: impl Into<String>) -> Self {
        self.feature_gates = Some(gates.into());
        self
    }

    /// How long each start-up step may take (default: 120 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts the control plane and waits until it is ready.
    pub async fn start(self) -> Result<ControlPlane, Error> {
        ControlPlane::start(self).await
    }
}

/// A running control plane. Dropping it stops every process and removes its directory.
pub struct ControlPlane {
    processes: Vec<Supervised>,
    url: String,
    kubeconfig_yaml: String,
    pki: Pki,
    builder: Builder,
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// A builder with the defaults.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// One control plane per process, started on first use with the defaults and stopped when
    /// the process exits. Tests of one binary share it (each in its own namespace).
    pub async fn shared() -> Result<&'static ControlPlane, Error> {
        ControlPlane::shared_with(Builder::default).await
    }

    /// [`ControlPlane::shared`], started with the builder `builder` makes when this is the first
    /// use in the process (later calls get that plane, whatever their builder).
    pub async fn shared_with(builder: impl FnOnce() -> Builder) -> Result<&'static ControlPlane, Error> {
        static SHARED: tokio::sync::OnceCell<ControlPlane> = tokio::sync::OnceCell::const_new();
        SHARED.get_or_try_init(|| builder().start()).await
    }

    /// Starts, trying again with fresh ports (up to three times) when a port picked as free was
    /// taken by another process before ours bound it.
    async fn start(builder: Builder) -> Result<ControlPlane, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match ControlPlane::start_once(builder.clone()).await {
                Err(e) if attempt < 3 && e.is_port_clash() => {
                    tracing::warn!(attempt, error = %e, "a port was taken meanwhile; starting again");
                }
                result => return result,
            }
        }
    }

    async fn start_once(builder: Builder) -> Result<ControlPlane, Error> {
        for binary in BINARIES.iter().copied().chain([KWOK_STAGES]) {
            if !builder.bin_dir.join(binary).is_file() {
                return Err(Error::MissingBinary { binary, dir: builder.bin_dir.clone() });
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("wasmop-controlplane-")
            .tempdir()
            .map_err(|source| Error::Io { what: "create a temporary directory".into(), source })?;
        process::remove_at_exit(dir.path());
        let pki = pki::generate(dir.path())?;
        let mut plane = ControlPlane {
            processes: Vec::new(),
            url: String::new(),
            kubeconfig_yaml: String::new(),
            pki,
            builder,
            dir,
        };
        plane.start_etcd_and_apiserver().await?;
        let client = plane.client().await?;
        plane.start_controllers()?;
        plane.wait_for_controller_manager(&client).await?;
        if plane.builder.nodes {
            plane.wait_for_node(&client).await?;
        }
        tracing::info!(url = %plane.url, dir = %plane.dir.path().display(), "control plane ready");
        Ok(plane)
    }

    async fn start_etcd_and_apiserver(&mut self) -> Result<(), Error> {
        let (client_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let data = self.dir.path().join("etcd");
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_args = args(&[
            ("data-dir", data.display().to_string()),
            ("listen-client-urls", etcd_url.clone()),
            ("advertise-client-urls", etcd_url.clone()),
            ("listen-peer-urls", peer_url.clone()),
            ("initial-advertise-peer-urls", peer_url.clone()),
            ("initial-cluster", format!("default={peer_url}")),
            ("unsafe-no-fsync", "true".into()),
            ("log-level", "warn".into()),
        ]);
        self.spawn("etcd", &etcd_args)?;
        self.wait_for_port("etcd", client_port).await?;

        let pki = self.pki.clone();
        let api_args = args(&[
            ("etcd-servers", etcd_url),
            ("bind-address", "127.0.0.1".into()),
            ("advertise-address", "127.0.0.1".into()),
            ("secure-port", api_port.to_string()),
            ("cert-dir", self.dir.path().join("apiserver-certs").display().to_string()),
            ("tls-cert-file", pki.serving_cert.display().to_string()),
            ("tls-private-key-file", pki.serving_key.display().to_string()),
            ("client-ca-file", pki.ca_cert.display().to_string()),
            ("service-account-key-file", pki.sa_pub.display().to_string()),
            ("service-account-signing-key-file", pki.sa_key.display().to_string()),
            ("service-account-issuer", "https://kubernetes.default.svc.cluster.local".into()),
            ("authorization-mode", "Node,RBAC".into()),
            ("service-cluster-ip-range", "10.96.0.0/16".into()),
            ("allow-privileged", "true".into()),
            ("profiling", "false".into()),
        ]);
        let gates = self.builder.feature_gates.iter().map(|g| format!("--feature-gates={g}"));
        let api_args: Vec<String> = api_args.into_iter().chain(gates).collect();
        self.spawn("kube-apiserver", &api_args)?;
        self.url = format!("https://127.0.0.1:{api_port}");
        self.kubeconfig_yaml = kubeconfig(&self.url, &pki);
        self.write_kubeconfig(&self.dir.path().join("admin.kubeconfig"))?;
        self.wait_for_readyz().await
    }

    fn start_controllers(&mut self) -> Result<(), Error> {
        let kubeconfig = self.dir.path().join("admin.kubeconfig").display().to_string();
        let kcm_args = args(&[
            ("kubeconfig", kubeconfig.clone()),
            ("authentication-kubeconfig", kubeconfig.clone()),
            ("authorization-kubeconfig", kubeconfig.clone()),
            ("leader-elect", "false".into()),
            ("secure-port", "0".into()),
            ("service-account-private-key-file", self.pki.sa_key.display().to_string()),
            ("root-ca-file", self.pki.ca_cert.display().to_string()),
            ("cluster-name", "wasmop".into()),
            ("profiling", "false".into()),
            // Its default client limit (20 QPS, burst 30) makes it, not the operator under test,
            // the bound of any test creating many Deployments (about five requests each).
            ("kube-api-qps", "200".into()),
            ("kube-api-burst", "400".into()),
        ]);
        self.spawn("kube-controller-manager", &kcm_args)?;
        if self.builder.nodes {
            let scheduler_args = args(&[
                ("kubeconfig", kubeconfig.clone()),
                ("authentication-kubeconfig", kubeconfig.clone()),
                ("authorization-kubeconfig", kubeconfig.clone()),
                ("leader-elect", "false".into()),
                ("secure-port", "0".into()),
                ("profiling", "false".into()),
            ]);
            self.spawn("kube-scheduler", &scheduler_args)?;
            let kwok_args = args(&[
                ("kubeconfig", kubeconfig),
                ("config", self.builder.bin_dir.join(KWOK_STAGES).display().to_string()),
                ("manage-all-nodes", "false".into()),
                ("manage-nodes-with-annotation-selector", "kwok.x-k8s.io/node=fake".into()),
                ("node-ip", "10.0.0.1".into()),
                ("cidr", "10.0.0.1/16".into()),
                ("server-address", String::new()),
            ]);
            self.spawn("kwok", &kwok_args)?;
        }
        Ok(())
    }

    fn spawn(&mut self, name: &'static str, args: &[String]) -> Result<(), Error> {
        let program = self.builder.bin_dir.join(name);
        let process = Supervised::spawn(name, &program, args, self.dir.path())?;
        self.processes.push(process);
        Ok(())
    }

    /// Fails with the process's log tail if any process has exited.
    fn check_alive(&mut self) -> Result<(), Error> {
        for p in &mut self.processes {
            if let Some(status) = p.exited() {
                return Err(Error::Exited {
                    name: p.name(),
                    status,
                    log: p.log_path().to_path_buf(),
                    tail: p.log_tail(30),
                });
            }
        }
        Ok(())
    }

    /// Polls `check` every 100 ms until it is true, failing early if a process exits.
    async fn wait<F, Fut>(&mut self, what: &str, mut check: F) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let started = Instant::now();
        loop {
            self.check_alive()?;
            if check().await {
                return Ok(());
            }
            if started.elapsed() > self.builder.timeout {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    after: self.builder.timeout,
                    dir: self.dir.path().to_path_buf(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_for_port(&mut self, what: &str, port: u16) -> Result<(), Error> {
        self.wait(&format!("{what} to listen on port {port}"), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await
    }

    async fn wait_for_readyz(&mut self) -> Result<(), Error> {
        let client = self.client().await?;
        self.wait("kube-apiserver /readyz", || {
            let client = client.clone();
            async move {
                let request = http::Request::get("/readyz").body(Vec::new());
                match request {
                    Ok(request) => client.request_text(request).await.is_ok_and(|body| body.trim() == "ok"),
                    Err(_) => false,
                }
            }
        })
        .await
    }

    /// The controller manager is working once it has created the `default` ServiceAccount.
    async fn wait_for_controller_manager(&mut self, client: &Client) -> Result<(), Error> {
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        self.wait("kube-controller-manager (the default ServiceAccount)", || {
            let accounts = accounts.clone();
            async move { accounts.get_opt("default").await.ok().flatten().is_some() }
        })
        .await
    }

    /// Registers the fake node and waits until kwok reports it Ready.
    async fn wait_for_node(&mut self, client: &Client) -> Result<(), Error> {
        let nodes: Api<Node> = Api::all(client.clone());
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"},
            },
            "status": {
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "10000"},
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": "10000"},
            },
        }))
        .map_err(|e| Error::Client(e.to_string()))?;
        if let Err(e) = nodes.create(&PostParams::default(), &node).await {
            return Err(Error::Client(format!("cannot register the fake node {NODE_NAME}: {e}")));
        }
        self.wait("kwok to report the fake node Ready", || {
            let nodes = nodes.clone();
            async move {
                let Ok(node) = nodes.get(NODE_NAME).await else { return false };
                node.status
                    .and_then(|s| s.conditions)
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            }
        })
        .await
    }

    /// The API server's URL (`https://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// An admin kubeconfig (client certificate in `system:masters`) with the CA embedded.
    pub fn kubeconfig_yaml(&self) -> &str {
        &self.kubeconfig_yaml
    }

    /// Writes the admin kubeconfig to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), Error> {
        std::fs::write(path, &self.kubeconfig_yaml)
            .map_err(|source| Error::Io { what: format!("write {}", path.display()), source })
    }

    /// The CA certificate (PEM) that signed the API server's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// A kubeconfig that authenticates with a bearer `token` (e.g. a ServiceAccount's, issued by
    /// the TokenRequest API), for running a process with exactly that identity's permissions.
    pub fn token_kubeconfig_yaml(&self, token: &str) -> String {
        kubeconfig_with_user(&self.url, &self.pki.ca_pem, &format!("    token: {token}\n"))
    }

    /// A kube client for the admin kubeconfig.
    pub async fn client(&self) -> Result<Client, Error> {
        let kubeconfig = Kubeconfig::from_yaml(&self.kubeconfig_yaml).map_err(|e| Error::Client(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Client(e.to_string()))?;
        Client::try_from(config).map_err(|e| Error::Client(e.to_string()))
    }

    /// The control plane's directory: certificates, kubeconfig, etcd data, one log per process.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for process in self.processes.iter_mut().rev() {
            process.stop(Duration::from_secs(5));
        }
    }
}

/// `--key=value` arguments.
fn args(pairs: &[(&str, String)]) -> Vec<String> {
    pairs.iter().map(|(k, v)| format!("--{k}={v}")).collect()
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|source| Error::Io { what: "bind a free loopback port".into(), source })?;
    listener.local_addr().map(|a| a.port()).map_err(|source| Error::Io { what: "read a bound port".into(), source })
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn kubeconfig(url: &str, pki: &Pki) -> String {
    let user = format!(
        "    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(&pki.admin_cert_pem),
        b64(&pki.admin_key_pem)
    );
    kubeconfig_with_user(url, &pki.ca_pem, &user)
}

fn kubeconfig_with_user(url: &str, ca_pem: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: wasmop\n  cluster:\n    server: {url}\n    certificate-authority-data: {}\nusers:\n- name: wasmop\n  user:\n{user}contexts:\n- name: wasmop\n  context:\n    cluster: wasmop\n    user: wasmop\ncurrent-context: wasmop\n",
        b64(ca_pem)
    )
}
