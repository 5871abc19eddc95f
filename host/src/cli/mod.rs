//! Command-line parsing and dispatch; one file per subcommand.

mod artifact;
mod convert;
mod crd;
#[cfg(feature = "embedded")]
mod dev;
mod eval;
mod inspect;
mod migrate;
mod new;
mod preview;
mod rbac;
mod rollout;
mod run;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use wasmop::plugin::{Runtime, RuntimeConfig, default_cache_dir};
use wasmop::traces::Traces;

/// A Kubernetes operator host whose reconcile logic lives in sandboxed WebAssembly plugins.
#[derive(Parser)]
#[command(name = "wasmop", version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Directory for compiled plugin code (default: $WASMOP_CACHE_DIR or ~/.cache/wasmop).
    #[arg(long, global = true, env = "WASMOP_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile plugins on every load instead of using the compiled-code cache.
    #[arg(long, global = true)]
    no_cache: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Output format of commands that print objects.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Output {
    Yaml,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run one plugin (and policies) on a custom resource offline and print the desired objects.
    Eval(eval::Args),
    /// Show what a candidate plugin would change on the live parents of its kind, writing nothing.
    Preview(preview::Args),
    /// Print the CustomResourceDefinitions that plugins ship.
    Crd(crd::Args),
    /// Print the least-privilege RBAC the plugins of a directory need.
    Rbac(rbac::Args),
    /// Run the operator against a cluster (current kubeconfig or in-cluster config).
    Run(Box<run::Args>),
    /// Run the embedded API server, the plugins and the examples, with a live view.
    #[cfg(feature = "embedded")]
    Dev(dev::Args),
    /// Convert objects with a plugin's conversion, or check its round trips (--check), offline.
    Convert(convert::Args),
    /// Rewrite the stored objects of a kind in its storage version and trim storedVersions.
    Migrate(migrate::Args),
    /// Follow and steer the staged rollout of a WasmPlugin: status, promote, abort.
    Rollout(rollout::Args),
    /// Create a plugin project: the plugin, an example, golden cases, a README and a Makefile.
    New(new::Args),
    /// Run a plugin's golden-file cases offline (and check their round trips); --update records.
    Test(test::Args),
    /// Print the host version and the plugin contract versions it loads.
    Version,
    /// Work with plugin files.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Load a plugin and print what it declares and what loading it cost.
    Inspect(inspect::Args),
    /// Push a plugin file to an OCI registry (CNCF Wasm layout) and print its digest.
    Push(artifact::PushArgs),
    /// Pull a plugin from an OCI registry, verified by digest, and print its digest.
    Pull(artifact::PullArgs),
}

/// Whether `command` runs until stopped (it keeps SIGPIPE ignored).
fn long_running(command: &Command) -> bool {
    match command {
        Command::Run(_) => true,
        #[cfg(feature = "embedded")]
        Command::Dev(_) => true,
        _ => false,
    }
}

/// Parses arguments, runs the command, and turns an error into one clear line and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !long_running(&cli.command) {
        restore_sigpipe();
    }
    // A long-running operator logs what it does; one-shot commands only warnings.
    let default_level = if matches!(cli.command, Command::Run(_)) { "info" } else { "warn" };
    let traces = match &cli.command {
        Command::Run(args) => match args.traces.settings().and_then(|s| s.map(|s| Traces::start(&s)).transpose()) {
            Ok(traces) => traces,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    init_logging(cli.log_format, default_level, traces.as_ref());
    let result = match cli.command {
        Command::Run(args) => {
            let cache_dir = cli.cache_dir.clone().or_else(default_cache_dir);
            runtime(&cli.cache_dir, cli.no_cache).and_then(|rt| block_on(run::run(rt, *args, cache_dir)))
        }
        #[cfg(feature = "embedded")]
        Command::Dev(args) => runtime(&cli.cache_dir, cli.no_cache).and_then(|rt| block_on(dev::run(rt, args))),
        Command::Preview(args) => runtime(&cli.cache_dir, cli.no_cache).and_then(|rt| block_on(preview::run(rt, args))),
        Command::Eval(args) => runtime(&cli.cache_dir, cli.no_cache).and_then(|rt| eval::run(&rt, args)),
        Command::Crd(args) => runtime(&cli.cache_dir, cli.no_cache).and_then(|rt| crd::run(&rt, args)),
        Command::Rbac(args) => runtime(&cli.cache_dir, cli.no_cache).and_then(|rt| rbac::run(&rt, args)),
        Command::Convert(args) => runtime(&cli.cache_dir, cli.no_cache).and_then(|rt| convert::run(&rt, args)),
        Command::Migrate(args) => block_on(migrate::run(args)),
        Command::Rollout(args) => block_on(rollout::run(args)),
        Command::New(args) => new::run(args),
        Command::Test(args) => runtime(&cli.cache_dir, cli.no_cache).and_then(|rt| test::run(&rt, args)),
        Command::Version => {
            print_version();
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Inspect(args)) => {
            runtime(&cli.cache_dir, cli.no_cache).and_then(|rt| inspect::run(&rt, args))
        }
        Command::Plugin(PluginCommand::Push(args)) => {
            runtime(&cli.cache_dir, cli.no_cache).and_then(|rt| artifact::push(&rt, args))
        }
        Command::Plugin(PluginCommand::Pull(args)) => artifact::pull(args),
    };
    if let Some(traces) = traces {
        traces.shutdown();
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The host version and the contracts it speaks, for `wasmop version`.
fn print_version() {
    println!("wasmop {}", env!("CARGO_PKG_VERSION"));
    println!("plugin contracts:");
    println!(
        "  wasmop:plugin@{} (current: operators may convert between CRD versions)",
        wasmop::plugin::CONTRACT_VERSION
    );
    for series in &wasmop::plugin::CONTRACT_SERIES[1..] {
        println!("  wasmop:plugin@{series}.x (loaded unchanged; no conversion)");
    }
}

/// `wasmop eval ... | head` ends quietly when the reader goes away, as Unix tools do: Rust
/// ignores SIGPIPE, which makes `print!` panic on the closed pipe instead. Only for the one-shot
/// commands: a server must survive a client that hangs up.
fn restore_sigpipe() {
    // SAFETY: setting a signal's disposition to the default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn runtime(cache_dir: &Option<PathBuf>, no_cache: bool) -> anyhow::Result<Runtime> {
    let cache_dir = if no_cache { None } else { cache_dir.clone().or_else(default_cache_dir) };
    Ok(Runtime::new(RuntimeConfig { cache_dir, ..RuntimeConfig::default() })?)
}

fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(future: F) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(future)
}

/// Runs one future to its value on a small runtime (one-shot commands).
fn block_on_value<T, E: Into<anyhow::Error>>(
    future: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(future).map_err(Into::into)
}

/// Logs to stderr (filtered by `WASMOP_LOG`) and, when `traces` is on, exports the host's spans
/// (filtered on their own: quiet logs still give full traces).
fn init_logging(format: LogFormat, default: &str, traces: Option<&Traces>) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("WASMOP_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let logs = match format {
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    tracing_subscriber::registry().with(logs.with_filter(filter)).with(traces.map(Traces::layer)).init();
}
