//! `wasmop new`: a ready plugin project — the plugin, an example custom resource, golden cases,
//! a README and a Makefile whose `make` builds NAME.wasm with pinned tools.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::ValueEnum;

/// Languages a project can be written in.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Lang {
    Rust,
}

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The plugin's language.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// The API group of the new kind.
    #[arg(long, default_value = "example.com")]
    group: String,
    /// The Rust SDK to depend on: a path (default: this wasmop's own source tree, when present).
    #[arg(long)]
    sdk: Option<PathBuf>,
    /// The plugin's name (a lowercase DNS label); the project goes to ./NAME.
    name: String,
}

/// One template file: where it goes in the project, and its text.
type Template = (&'static str, &'static str);

const RUST: &[Template] = &[
    ("Cargo.toml", include_str!("../../../templates/rust-operator/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("../../../templates/rust-operator/src/lib.rs.tmpl")),
    ("examples/sample.yaml", include_str!("../../../templates/rust-operator/examples/sample.yaml.tmpl")),
    ("tests/greets.yaml", include_str!("../../../templates/rust-operator/tests/greets.yaml.tmpl")),
    ("tests/empty-greeting.yaml", include_str!("../../../templates/rust-operator/tests/empty-greeting.yaml.tmpl")),
    ("Makefile", include_str!("../../../templates/rust-operator/Makefile.tmpl")),
    ("README.md", include_str!("../../../templates/rust-operator/README.md.tmpl")),
    (".gitignore", include_str!("../../../templates/rust-operator/gitignore.tmpl")),
];

/// The versions every crate was tested with here: a new Rust project starts from them.
const CARGO_LOCK: &str = include_str!("../../../Cargo.lock");

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !wasmop::names::is_dns_label(&args.name) {
        bail!("{:?} is not a valid plugin name: use a lowercase DNS label (a-z, 0-9, '-'), e.g. demo", args.name);
    }
    let dir = PathBuf::from(&args.name);
    if dir.exists() {
        bail!("{} already exists; choose another name or remove it", dir.display());
    }
    let vars = variables(&args)?;
    let templates = match args.lang {
        Lang::Rust => RUST,
    };
    for (path, text) in templates {
        write(&dir.join(path), &render(text, &vars))?;
    }
    if matches!(args.lang, Lang::Rust) {
        write(&dir.join("Cargo.lock"), CARGO_LOCK)?;
    }
    println!(
        "created {} ({:?} operator plugin, kind {} in {})",
        dir.display(),
        args.lang,
        kind_of(&args.name),
        args.group
    );
    println!("next: cd {} && make && make test && make eval", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The placeholders of the templates and their values.
fn variables(args: &Args) -> anyhow::Result<Vec<(&'static str, String)>> {
    let kind = kind_of(&args.name);
    let singular = kind.to_lowercase();
    Ok(vec![
        ("{{name}}", args.name.clone()),
        ("{{crate}}", args.name.replace('-', "_")),
        ("{{Kind}}", kind),
        ("{{singular}}", singular.clone()),
        ("{{plural}}", format!("{singular}s")),
        ("{{group}}", args.group.clone()),
        ("{{sdk}}", sdk_dependency(args.sdk.as_deref())?),
    ])
}

/// The kind a plugin named `my-app` serves: `MyApp`.
fn kind_of(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

/// `wasmop-sdk`'s dependency line: the given path, else this wasmop's source tree.
fn sdk_dependency(sdk: Option<&Path>) -> anyhow::Result<String> {
    let path = match sdk {
        Some(path) => path.to_path_buf(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk"),
    };
    let path = path.canonicalize().with_context(|| {
        format!("the Rust SDK is not at {}; name its directory (plugins/sdk of wasmop) with --sdk", path.display())
    })?;
    Ok(format!("{{ path = {:?} }}", path.display().to_string()))
}

fn render(text: &str, vars: &[(&str, String)]) -> String {
    vars.iter().fold(text.to_string(), |text, (key, value)| text.replace(key, value))
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
