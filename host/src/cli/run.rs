//! `wasmop run`: the operator, against the current kubeconfig or the in-cluster config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::watch;
use wasmop::catalog::{Catalog, CatalogBuilder, ClusterSource};
use wasmop::controller::ControllerOptions;
use wasmop::leader::{self, LeaderSettings};
use wasmop::plugin::Runtime;
use wasmop::registry::{ArtifactCache, Registry};
use wasmop::shard::{self, ShardSettings, Shards};
use wasmop::supervisor::Supervisor;
use wasmop::telemetry::{self, Telemetry};
use wasmop::webhook::{CertSource, Endpoint, Webhook};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Directory of plugin files (`*.wasm`): operators and policies (needed with the `dir`
    /// plugin source).
    #[arg(long)]
    plugins: Option<PathBuf>,
    #[command(flatten)]
    sources: SourceArgs,
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the in-cluster config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long)]
    context: Option<String>,
    /// Only reconcile parents in this namespace (repeatable; default: all namespaces).
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// Server-side apply each plugin's CRD and wait for it to be Established before starting.
    #[arg(long)]
    install_crds: bool,
    /// Most reconciles running at once per plugin.
    #[arg(long, default_value_t = 8)]
    concurrency: u16,
    /// Reconcile every parent again this often (seconds) even when nothing changed.
    #[arg(long, default_value_t = 600)]
    resync_seconds: u64,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Do not serve metrics and health endpoints.
    #[arg(long)]
    no_metrics: bool,
    #[command(flatten)]
    leader: LeaderArgs,
    /// Split the parents into N shards, each held by one replica through a Lease (instead of
    /// --leader-elect: every replica reconciles its shards; a dead replica's are taken over).
    #[arg(long, conflicts_with = "leader_elect")]
    shards: Option<u32>,
    /// Prefix of the shard Leases (PREFIX-0 …) and member Leases (PREFIX-member-IDENTITY).
    #[arg(long, default_value = "wasmop-shard")]
    shard_lease_prefix: String,
    #[command(flatten)]
    webhook: WebhookArgs,
    #[command(flatten)]
    pub(crate) traces: TraceArgs,
}

/// OpenTelemetry trace flags (the standard `OTEL_EXPORTER_OTLP_*` and `OTEL_SERVICE_NAME`
/// variables apply too).
#[derive(clap::Args)]
pub(crate) struct TraceArgs {
    /// Export a trace of each reconcile to this OTLP/HTTP collector (such as
    /// http://jaeger-collector:4318; `/v1/traces` is appended). Also on when
    /// OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Share of reconciles traced, from 0 to 1 (0.1 keeps one in ten).
    #[arg(long, default_value_t = 1.0)]
    trace_sample_ratio: f64,
}

impl TraceArgs {
    /// The validated settings, or `None` when traces are off.
    pub(crate) fn settings(&self) -> Result<Option<wasmop::traces::TraceSettings>, wasmop::traces::TraceError> {
        wasmop::traces::TraceSettings::from_flags(self.otlp_endpoint.as_deref(), self.trace_sample_ratio)
    }
}

/// Where plugins come from and how registries are reached.
#[derive(clap::Args)]
pub(crate) struct SourceArgs {
    /// Plugin sources: `dir` (the --plugins directory), `cluster` (WasmPlugin objects), or
    /// both (`dir,cluster`; a file serves a kind before a WasmPlugin does).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "dir")]
    plugin_sources: Vec<PluginSourceKind>,
    /// Reach this registry (HOST or HOST:PORT) over plain HTTP instead of HTTPS (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure_registries: Vec<String>,
    /// Largest plugin artifact pulled or unpacked (bytes, or with a Ki/Mi/Gi suffix).
    #[arg(long, default_value = "64Mi", value_parser = parse_size)]
    max_plugin_size: u64,
    /// Directory of pulled artifacts, keyed by digest (default: the cache directory's
    /// `artifacts`); in a cluster an emptyDir, so a restart serves with the registry down.
    #[arg(long)]
    plugin_cache_dir: Option<PathBuf>,
    /// Most bytes the artifact cache keeps (least recently used go first).
    #[arg(long, default_value = "512Mi", value_parser = parse_size)]
    plugin_cache_size: u64,
    /// The operator's namespace, where WasmPlugin pull Secrets and ConfigMaps are read.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    operator_namespace: String,
}

/// A kind of plugin source.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PluginSourceKind {
    /// The --plugins directory.
    Dir,
    /// The cluster's WasmPlugin objects.
    Cluster,
}

impl SourceArgs {
    fn has(&self, kind: PluginSourceKind) -> bool {
        self.plugin_sources.contains(&kind)
    }

    /// How registries are reached (credentials from the docker config file).
    fn registry(&self) -> Registry {
        Registry::default().insecure(self.insecure_registries.clone()).max_size(self.max_plugin_size)
    }

    /// The catalog of the chosen sources; `writer` says when this replica writes WasmPlugin
    /// status.
    fn catalog(
        &self,
        rt: Runtime,
        plugins: Option<&PathBuf>,
        client: &Client,
        cache_dir: Option<PathBuf>,
        writer: watch::Receiver<bool>,
    ) -> anyhow::Result<CatalogBuilder> {
        let mut builder = Catalog::builder(Arc::new(rt));
        if self.has(PluginSourceKind::Dir) {
            let Some(dir) = plugins else { bail!("the dir plugin source needs --plugins DIR") };
            builder = builder.dir(dir.clone());
        }
        if self.has(PluginSourceKind::Cluster) {
            let Some(dir) = self.plugin_cache_dir.clone().or_else(|| cache_dir.map(|d| d.join("artifacts"))) else {
                bail!("no directory for pulled plugins: pass --plugin-cache-dir")
            };
            let cache = ArtifactCache::new(dir, self.plugin_cache_size);
            let source = ClusterSource::new(client.clone(), self.operator_namespace.clone(), cache)
                .registry(self.registry())
                .status_writer(writer);
            builder = builder.cluster(source);
        }
        Ok(builder)
    }
}

/// A size in bytes: a number, optionally with a Ki, Mi or Gi suffix.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let shift = match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        _ => return Err(format!("{text:?}: write bytes, or a number with Ki, Mi or Gi (e.g. 64Mi)")),
    };
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a size (e.g. 64Mi)"))?;
    number.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

/// Conversion webhook flags: every replica serves it; the API server calls it for CRDs whose
/// plugin converts between versions.
#[derive(clap::Args)]
pub(crate) struct WebhookArgs {
    /// Address of the conversion webhook (HTTPS, path /convert).
    #[arg(long, default_value = "0.0.0.0:9443")]
    webhook_addr: std::net::SocketAddr,
    /// Serve no conversion webhook: CRDs of converting plugins get conversion None.
    #[arg(long)]
    no_webhook: bool,
    /// The Service in front of every replica's webhook port, NAMESPACE/NAME (in cluster; port 443).
    #[arg(long, conflicts_with = "webhook_url")]
    webhook_service: Option<String>,
    /// The URL the API server calls instead (out of cluster), e.g. https://10.0.0.5:9443/convert
    /// (default: https://127.0.0.1:PORT/convert).
    #[arg(long)]
    webhook_url: Option<String>,
    /// Secret NAMESPACE/NAME keeping the generated certificate, shared by the replicas
    /// (default with --webhook-service: its namespace/wasmop-webhook-tls; else in memory).
    #[arg(long, conflicts_with = "webhook_cert_dir")]
    webhook_cert_secret: Option<String>,
    /// Directory with tls.crt, tls.key and optionally ca.crt to serve instead (e.g. a
    /// cert-manager Secret mounted there); without ca.crt no CA is injected into CRDs.
    #[arg(long)]
    webhook_cert_dir: Option<PathBuf>,
}

impl WebhookArgs {
    /// Starts the webhook unless `--no-webhook`.
    pub(crate) async fn start(
        &self,
        client: &Client,
        catalog: &Catalog,
        telemetry: &Telemetry,
    ) -> anyhow::Result<Option<Webhook>> {
        if self.no_webhook {
            return Ok(None);
        }
        let mut builder = Webhook::builder(self.webhook_addr).catalog(catalog).metrics(telemetry.metrics.clone());
        if self.webhook_service.is_none()
            && self.webhook_url.is_none()
            && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        {
            tracing::warn!(
                "running in a cluster without --webhook-service: CRDs will point the API server at \
                https://127.0.0.1 of this pod, which it cannot reach; pass --webhook-service NAMESPACE/NAME"
            );
        }
        let service = self.webhook_service.as_deref().map(split_ref).transpose()?;
        if let Some((namespace, name)) = &service {
            builder =
                builder.endpoint(Endpoint::Service { namespace: namespace.clone(), name: name.clone(), port: 443 });
        }
        if let Some(url) = &self.webhook_url {
            anyhow::ensure!(url.starts_with("https://"), "--webhook-url {url:?} must start with https://");
            builder = builder.endpoint(Endpoint::Url(url.clone()));
        }
        let secret = match (&self.webhook_cert_secret, &service) {
            (Some(secret), _) => Some(split_ref(secret)?),
            (None, Some((namespace, _))) => Some((namespace.clone(), "wasmop-webhook-tls".to_string())),
            (None, None) => None,
        };
        if let Some(dir) = &self.webhook_cert_dir {
            builder = builder.certs(CertSource::Dir(dir.clone()));
        } else if let Some((namespace, name)) = secret {
            builder = builder.certs(CertSource::Secret { namespace, name });
        }
        let webhook = builder.start(client.clone()).await.context("starting the conversion webhook")?;
        Ok(Some(webhook))
    }
}

/// `NAMESPACE/NAME` as its two parts.
fn split_ref(value: &str) -> anyhow::Result<(String, String)> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok((ns.to_string(), name.to_string())),
        _ => bail!("{value:?} must be NAMESPACE/NAME"),
    }
}

/// Leader election flags, with controller-runtime's names and defaults.
#[derive(clap::Args)]
struct LeaderArgs {
    /// Run controllers only while holding the leader Lease (for several replicas).
    #[arg(long)]
    leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "wasmop-leader")]
    leader_elect_id: String,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else `default`).
    #[arg(long)]
    leader_elect_namespace: Option<String>,
    /// How long a Lease is valid after its last renewal.
    #[arg(long, default_value = "15s", value_parser = leader::parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long the leader keeps leading without a confirmed renewal; shorter than the duration.
    #[arg(long, default_value = "10s", value_parser = leader::parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// How often the leader renews and a standby tries.
    #[arg(long, default_value = "2s", value_parser = leader::parse_duration)]
    leader_elect_retry_period: Duration,
}

impl LeaderArgs {
    /// The validated settings, or `None` without `--leader-elect`.
    fn settings(&self) -> anyhow::Result<Option<LeaderSettings>> {
        if !self.leader_elect {
            return Ok(None);
        }
        let settings = self.lease(&self.leader_elect_id);
        settings.validate()?;
        Ok(Some(settings))
    }

    /// The validated sharding settings, or `None` without `--shards`.
    fn shard_settings(&self, shards: Option<u32>, prefix: &str) -> anyhow::Result<Option<ShardSettings>> {
        let Some(shards) = shards else { return Ok(None) };
        let settings = ShardSettings { shards, lease: self.lease(prefix) };
        settings.validate()?;
        Ok(Some(settings))
    }

    /// Settings of Lease `name` with this replica's identity, namespace and the durations.
    fn lease(&self, name: &str) -> LeaderSettings {
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        LeaderSettings {
            lease_name: name.to_string(),
            namespace: self
                .leader_elect_namespace
                .clone()
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .unwrap_or_else(|| "default".into()),
            identity,
            lease_duration: self.leader_elect_lease_duration,
            renew_deadline: self.leader_elect_renew_deadline,
            retry_period: self.leader_elect_retry_period,
        }
    }
}

pub(crate) async fn run(rt: Runtime, args: Args, cache_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let client = client(args.kubeconfig.as_deref(), args.context.clone()).await?;
    let telemetry = Telemetry::new();
    let leader = args.leader.settings()?;
    let sharding = args.leader.shard_settings(args.shards, &args.shard_lease_prefix)?;
    let shards = sharding.as_ref().map_or_else(Shards::all, |s| Shards::none(s.shards));
    // One replica writes WasmPlugin status: the leader, the holder of shard 0, or the only one.
    let (writer_tx, writer) = watch::channel(leader.is_none() && sharding.is_none());
    let cluster = args.sources.has(PluginSourceKind::Cluster);
    if cluster && args.install_crds {
        wasmop::crd::install_wasmplugin(&client).await?;
    }
    // The plugins are loaded once, here; the webhook, the supervisor and every namespace read
    // the catalog's snapshots. Fail fast on a directory with no usable operator (WasmPlugins
    // may bring one later).
    let catalog = args
        .sources
        .catalog(rt, args.plugins.as_ref(), &client, cache_dir, writer)?
        .events(client.clone(), args.namespaces.first().cloned())
        .telemetry(telemetry.clone())
        .start()
        .await?;
    if catalog.snapshot().operators.is_empty() {
        if !cluster {
            bail!("{}", no_operator(&catalog));
        }
        tracing::warn!("no operator plugin serves yet; waiting for WasmPlugins");
    }
    if sharding.is_some() {
        tokio::spawn(follow_shard_zero(shards.clone(), writer_tx.clone()));
    }
    // Every replica answers conversion reviews, the leader and the standbys alike.
    let webhook = args.webhook.start(&client, &catalog, &telemetry).await?;
    let conversion = webhook.as_ref().map(Webhook::conversion);
    let _metrics = serve_metrics(&args, &telemetry).await;
    let mut shutdown = std::pin::pin!(shutdown_signal());

    let leadership = match &leader {
        None => None,
        Some(settings) => {
            telemetry.health.set_standby(true);
            telemetry.metrics.set_leader(&settings.lease_name, false);
            tokio::select! {
                leadership = leader::acquire(&client, settings) => Some(leadership?),
                _ = &mut shutdown => return Ok(ExitCode::SUCCESS),
            }
        }
    };
    telemetry.health.set_standby(false);
    if let Some(settings) = &leader {
        telemetry.metrics.set_leader(&settings.lease_name, true);
        let _ = writer_tx.send(true);
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let claimer = sharding.map(|settings| {
        let metrics = telemetry.metrics.clone();
        tokio::spawn(shard::run(client.clone(), settings, shards.clone(), metrics, stop_rx.clone()))
    });
    let mut builder = Supervisor::builder(client, &catalog)
        .options(ControllerOptions {
            concurrency: args.concurrency,
            resync: Duration::from_secs(args.resync_seconds),
            shards,
            ..ControllerOptions::default()
        })
        .namespaces(args.namespaces.clone())
        .install_crds(args.install_crds)
        .telemetry(telemetry);
    if let Some(conversion) = conversion {
        builder = builder.conversion(conversion);
    }
    let mut stop = stop_rx.clone();
    let supervisor = builder.build().run(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    let mut supervisor = std::pin::pin!(supervisor);
    let lost = async {
        match &leadership {
            Some(l) => l.lost().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = &mut supervisor => {}
        () = &mut shutdown => {
            // Stop taking new work, let reconciles in flight finish (bounded per controller),
            // then release the Lease so the next leader starts at once.
            let _ = stop_tx.send(true);
            supervisor.await;
            if let Some(l) = leadership {
                l.release().await;
            }
            // Gives every shard back (after its reconciles), so the others take over at once.
            if let Some(claimer) = claimer {
                claimer.await??;
            }
        }
        lost = lost => {
            // Like controller-runtime: stop at once and exit non-zero; the controllers' tasks
            // end with the runtime, before another replica may take over.
            return Err(lost.into());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Makes this replica the WasmPlugin status writer while it holds shard 0 — and only then: a
/// replica giving shard 0 back to a newcomer stops writing, so one replica decides at a time.
async fn follow_shard_zero(shards: Shards, writer: watch::Sender<bool>) {
    let mut changes = std::pin::pin!(shards.changes());
    loop {
        let _ = writer.send(shards.owned().contains(&0));
        if changes.next().await.is_none() {
            return;
        }
    }
}

/// Why no operator serves: the directory's refusals, or that it holds none.
pub(crate) fn no_operator(catalog: &Catalog) -> String {
    let snapshot = catalog.snapshot();
    let dir = catalog.dir().map_or_else(|| "the plugin sources".to_string(), |d| d.display().to_string());
    let mut message = format!("no operator plugin could be loaded from {dir}");
    if snapshot.rejected.is_empty() {
        message.push_str("; build one with `make plugins`, or copy a .wasm file into it");
    }
    for (source, reason) in &snapshot.rejected {
        message.push_str(&format!("\n  {source}: {reason}"));
    }
    message
}

/// Serves /metrics, /healthz and /readyz unless `--no-metrics`; a port in use is logged, not fatal.
async fn serve_metrics(args: &Args, telemetry: &Telemetry) -> Option<tokio::task::JoinHandle<()>> {
    if args.no_metrics {
        return None;
    }
    match telemetry::serve(args.metrics_addr, telemetry.clone()).await {
        Ok((_, task)) => Some(task),
        Err(e) => {
            tracing::error!(addr = %args.metrics_addr, error = %e, "cannot serve metrics; pass --metrics-addr or --no-metrics");
            None
        }
    }
}

/// A client from an explicit kubeconfig file, or inferred (KUBECONFIG, ~/.kube/config, in-cluster).
pub(crate) async fn client(kubeconfig: Option<&std::path::Path>, context: Option<String>) -> anyhow::Result<Client> {
    let options = KubeConfigOptions { context, ..KubeConfigOptions::default() };
    let config = match kubeconfig {
        Some(path) => {
            let file =
                Kubeconfig::read_from(path).with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options).await?
        }
        None if options.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await.context("no kubeconfig and not running in a cluster; pass --kubeconfig")?,
    };
    Ok(Client::try_from(config)?)
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_others_clearly() {
        assert_eq!(parse_size("64Mi"), Ok(64 << 20));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("2Gi"), Ok(2 << 30));
        assert!(parse_size("64MB").unwrap_err().contains("Ki, Mi or Gi"));
        assert!(parse_size("Mi").unwrap_err().contains("not a size"));
    }
}
