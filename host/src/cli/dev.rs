//! `wasmop dev`: an API server — the embedded in-memory one (with the Deployment status
//! simulator) or the real control plane built by `make controlplane` — the plugins' CRDs, the
//! example resources, and the operator, with a live table of parents. The plugins directory is
//! watched, so rebuilding a plugin into it reloads it.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::Value;
use wasmop::catalog::Catalog;
use wasmop::controller::ControllerOptions;
use wasmop::crd;
use wasmop::discovery::resolve;
use wasmop::manifest::read_objects;
use wasmop::plugin::{Gvk, Runtime};
use wasmop::status::ready_of;
use wasmop::supervisor::Supervisor;
use wasmop::telemetry::ReloadStats;
use wasmop::telemetry::{self, Telemetry};
use wasmop::webhook::{Conversion, Webhook};
use wasmop_apiserver::{ApiServer, Config as ServerConfig};
use wasmop_controlplane::ControlPlane;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Directory of plugin files.
    #[arg(long, default_value = ".wasmop/plugins")]
    plugins: PathBuf,
    /// Directory of example resources (`*.yaml`) to apply.
    #[arg(long, default_value = "examples")]
    examples: PathBuf,
    /// Where to write the kubeconfig for kubectl.
    #[arg(long, default_value = ".wasmop/kubeconfig")]
    kubeconfig: PathBuf,
    /// Port of the API server on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Exit 0 once every example is Ready, non-zero with the reasons if not within --timeout.
    #[arg(long)]
    once: bool,
    /// Seconds `--once` waits.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Which API server: the embedded in-memory one, or a real control plane (etcd,
    /// kube-apiserver, kube-controller-manager, kube-scheduler, kwok) built by `make controlplane`.
    #[arg(long, value_enum, default_value_t = Backend::Memory)]
    control_plane: Backend,
    /// Directory of the real control plane's binaries (default: $WASMOP_CONTROLPLANE_BIN, else
    /// target/controlplane/bin).
    #[arg(long)]
    control_plane_bin: Option<PathBuf>,
    /// Start only the API server (with the plugins' CRDs installed) and keep it up until
    /// Ctrl-C, for `wasmop run` processes and kubectl.
    #[arg(long)]
    no_operator: bool,
}

/// The API server `wasmop dev` runs on.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Backend {
    /// The embedded in-memory API server.
    Memory,
    /// The real control plane built from source.
    Real,
}

/// A running API server of either backend.
enum Server {
    Memory(ApiServer),
    Real(Box<ControlPlane>),
}

impl Server {
    async fn start(args: &Args) -> anyhow::Result<Server> {
        match args.control_plane {
            Backend::Memory => {
                let config = ServerConfig { port: args.port, simulate_deployments: true, ..ServerConfig::default() };
                let server = ApiServer::start(config).await.context("cannot start the in-memory API server")?;
                Ok(Server::Memory(server))
            }
            Backend::Real => {
                anyhow::ensure!(args.port == 0, "--port applies to the in-memory API server only");
                let mut builder = ControlPlane::builder();
                if let Some(dir) = &args.control_plane_bin {
                    builder = builder.bin_dir(dir);
                }
                println!(
                    "wasmop dev: starting the real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok)"
                );
                let plane = builder.start().await.context("cannot start the real control plane")?;
                Ok(Server::Real(Box::new(plane)))
            }
        }
    }

    fn url(&self) -> String {
        match self {
            Server::Memory(s) => s.url(),
            Server::Real(p) => p.url().to_string(),
        }
    }

    fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        match self {
            Server::Memory(s) => s.write_kubeconfig(path)?,
            Server::Real(p) => p.write_kubeconfig(path)?,
        }
        Ok(())
    }

    async fn client(&self) -> anyhow::Result<Client> {
        match self {
            Server::Memory(s) => Ok(Client::try_from(kube::Config::new(s.url().parse()?))?),
            Server::Real(p) => Ok(p.client().await?),
        }
    }

    async fn shutdown(self) {
        match self {
            Server::Memory(s) => s.shutdown().await,
            Server::Real(p) => drop(tokio::task::spawn_blocking(move || drop(p)).await),
        }
    }
}

/// One row of the live table.
#[derive(Clone, PartialEq, Eq)]
struct Row {
    plugin: String,
    ready: String,
    reason: String,
    message: String,
    children: usize,
}

pub(crate) async fn run(rt: Runtime, args: Args) -> anyhow::Result<ExitCode> {
    let server = Server::start(&args).await?;
    let result = serve(rt, &args, &server).await;
    server.shutdown().await;
    result
}

/// Everything `wasmop dev` does once its API server is up.
async fn serve(rt: Runtime, args: &Args, server: &Server) -> anyhow::Result<ExitCode> {
    if let Some(dir) = args.kubeconfig.parent() {
        std::fs::create_dir_all(dir)?;
    }
    server.write_kubeconfig(&args.kubeconfig)?;
    let client = server.client().await?;

    let telemetry = Telemetry::new();
    let catalog = Catalog::builder(Arc::new(rt))
        .dir(args.plugins.clone())
        .events(client.clone(), None)
        .telemetry(telemetry.clone())
        .start()
        .await?;
    let plugins = catalog.snapshot();
    anyhow::ensure!(
        !plugins.operators.is_empty(),
        "{}\n  run `make dev` (it builds and copies the plugins)",
        super::run::no_operator(&catalog)
    );
    // The conversion webhook of plugins whose CRD has several versions, on loopback.
    let webhook = Webhook::builder(([127, 0, 0, 1], 0).into()).catalog(&catalog).start(client.clone()).await?;
    let conversion = webhook.conversion();
    for revision in plugins.operators.values() {
        crd::install(&client, &revision.plugin, Some(&conversion)).await?;
    }
    println!("wasmop dev: API server at {}", server.url());
    println!("  kubectl:  export KUBECONFIG={}", args.kubeconfig.display());
    println!("            kubectl get appoperators,deployments -A");
    for p in plugins.operators.values().map(|r| &r.plugin) {
        println!(
            "  plugin:   {} {} ({}, revision {})",
            p.metadata().name,
            p.metadata().version,
            p.metadata().parent,
            p.file().revision()
        );
    }
    for p in plugins.policies.iter().map(|r| &r.plugin) {
        println!("  policy:   {} {}", p.metadata().name, p.metadata().version);
    }
    drop(plugins);
    if args.no_operator {
        println!("  CRDs installed; no operator and no examples (--no-operator). Ctrl-C to stop.");
        super::run::shutdown_signal().await;
        return Ok(ExitCode::SUCCESS);
    }
    let examples = apply_examples(&client, &args.examples).await?;
    println!("  examples: {} applied from {}", examples.len(), args.examples.display());
    run_operator(&catalog, args, client, conversion, telemetry, &examples).await
}

/// Runs the operator (the supervisor, as `wasmop run` does) beside the live table or `--once`.
async fn run_operator(
    catalog: &Catalog,
    args: &Args,
    client: Client,
    conversion: Conversion,
    telemetry: Telemetry,
    examples: &[(Gvk, Option<String>, String)],
) -> anyhow::Result<ExitCode> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let options = ControllerOptions { resync: Duration::from_secs(60), ..ControllerOptions::default() };
    let reloads = telemetry.reloads.clone();
    let (metrics_addr, metrics_task) = telemetry::serve("127.0.0.1:0".parse()?, telemetry.clone()).await?;
    println!("  metrics:  http://{metrics_addr}/metrics");
    let supervisor = Supervisor::builder(client.clone(), catalog)
        .options(options)
        .install_crds(true)
        .conversion(conversion)
        .telemetry(telemetry)
        .build();
    let operator_task = {
        let mut rx = stop_rx.clone();
        tokio::spawn(supervisor.run(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }))
    };

    let code = if args.once {
        wait_until_ready(&client, examples, Duration::from_secs(args.timeout)).await
    } else {
        live_table(&client, examples, &reloads).await;
        ExitCode::SUCCESS
    };
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), operator_task).await;
    metrics_task.abort();
    Ok(code)
}

/// Server-side applies every object of every `*.yaml` in `dir`; returns (gvk, namespace, name)
/// of each.
async fn apply_examples(client: &Client, dir: &Path) -> anyhow::Result<Vec<(Gvk, Option<String>, String)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read examples directory {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut applied = Vec::new();
    for file in files {
        for obj in read_objects(&file)? {
            let gvk =
                Gvk::from_api_version(obj["apiVersion"].as_str().unwrap_or(""), obj["kind"].as_str().unwrap_or(""));
            let (ar, namespaced) = resolve(client, &gvk).await?;
            let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let namespace = namespaced.then(|| obj["metadata"]["namespace"].as_str().unwrap_or("default").to_string());
            let api: Api<DynamicObject> = match &namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                None => Api::all_with(client.clone(), &ar),
            };
            api.patch(&name, &PatchParams::apply("wasmop-dev").force(), &Patch::Apply(&obj))
                .await
                .with_context(|| format!("cannot apply {gvk} {name} from {}", file.display()))?;
            applied.push((gvk, namespace, name));
        }
    }
    Ok(applied)
}

/// The current rows for the examples, keyed by `namespace/name`.
async fn rows(client: &Client, examples: &[(Gvk, Option<String>, String)]) -> BTreeMap<String, Row> {
    let mut out = BTreeMap::new();
    for (gvk, namespace, name) in examples {
        let Ok((ar, _)) = resolve(client, gvk).await else { continue };
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let Ok(Some(obj)) = api.get_opt(name).await else { continue };
        let status = obj.data.get("status").cloned().unwrap_or(Value::Null);
        let (ready, reason, message) =
            ready_of(&status).unwrap_or_else(|| ("Unknown".into(), "Pending".into(), String::new()));
        let uid = obj.metadata.uid.clone().unwrap_or_default();
        let children = count_children(client, namespace.as_deref(), &uid).await;
        let key = format!("{}/{}", namespace.as_deref().unwrap_or("-"), name);
        out.insert(key, Row { plugin: gvk.kind.clone(), ready, reason, message, children });
    }
    out
}

/// Deployments owned by the parent with `uid` (the default plugin's child kind).
async fn count_children(client: &Client, namespace: Option<&str>, uid: &str) -> usize {
    let api: Api<k8s_openapi::api::apps::v1::Deployment> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let Ok(list) = api.list(&ListParams::default().labels("app.kubernetes.io/managed-by=wasmop")).await else {
        return 0;
    };
    list.items.iter().filter(|d| d.metadata.owner_references.iter().flatten().any(|o| o.uid == uid)).count()
}

fn render(rows: &BTreeMap<String, Row>) -> String {
    let mut out = format!(
        "{:<28} {:<12} {:<6} {:<14} {:<9} {}\n",
        "NAMESPACE/NAME", "KIND", "READY", "REASON", "CHILDREN", "MESSAGE"
    );
    for (key, r) in rows {
        out.push_str(&format!(
            "{:<28} {:<12} {:<6} {:<14} {:<9} {}\n",
            key, r.plugin, r.ready, r.reason, r.children, r.message
        ));
    }
    out
}

async fn wait_until_ready(client: &Client, examples: &[(Gvk, Option<String>, String)], timeout: Duration) -> ExitCode {
    let started = Instant::now();
    loop {
        let rows = rows(client, examples).await;
        let all_ready = rows.len() == examples.len() && rows.values().all(|r| r.ready == "True");
        if all_ready || started.elapsed() > timeout {
            print!("{}", render(&rows));
            if all_ready {
                println!("all {} examples Ready after {:.1}s", rows.len(), started.elapsed().as_secs_f64());
                return ExitCode::SUCCESS;
            }
            eprintln!("error: not every example became Ready within {}s:", timeout.as_secs());
            for (key, r) in rows.iter().filter(|(_, r)| r.ready != "True") {
                eprintln!("  {key}: {} {}", r.reason, r.message);
            }
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn live_table(client: &Client, examples: &[(Gvk, Option<String>, String)], reloads: &ReloadStats) {
    let tty = std::io::stdout().is_terminal();
    let mut last = None;
    let mut shutdown = std::pin::pin!(super::run::shutdown_signal());
    loop {
        let table = format!("{}\n{}", reloads.summary(), render(&rows(client, examples).await));
        if last.as_ref() != Some(&table) {
            if tty {
                print!("\x1b[2J\x1b[H");
            }
            print!("{table}");
            println!("(Ctrl-C to stop)");
            let _ = std::io::stdout().flush();
            last = Some(table);
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
