//! `wasmop new`: a ready plugin project — the plugin, an example custom resource, golden cases,
//! a README and a Makefile whose `make` builds NAME.wasm with pinned tools.
//!
//! Templates live in `templates/LANG-WORLD/` (placeholders `{{name}}`, `{{Kind}}`, ...). The
//! golden cases and examples are the same for every language of a world (the plugins answer
//! alike), so they are kept once, in `rust-operator/` and `rust-policy/`. The Python and
//! JavaScript helpers, the WIT contract, the pins and the reproducibility shim are copied from
//! this source tree as they are.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::ValueEnum;

/// Languages a project can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Lang {
    Rust,
    Python,
    Js,
}

impl Lang {
    fn title(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
        }
    }
}

/// What the plugin is: an operator (a kind and what it becomes) or a policy (reviews children).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum World {
    Operator,
    Policy,
}

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The plugin's language.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// An operator plugin (a new kind and what it becomes) or a policy plugin (reviews the
    /// children operator plugins want to apply).
    #[arg(long, value_enum, default_value_t = World::Operator)]
    world: World,
    /// The API group of the new kind (operators).
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

/// The text of `templates/$path`.
macro_rules! template {
    ($path:literal) => {
        include_str!(concat!("../../../templates/", $path))
    };
}

/// The text of `$path` in this source tree, copied into projects as it is.
macro_rules! vendored {
    ($path:literal) => {
        include_str!(concat!("../../../", $path))
    };
}

const RUST_OPERATOR: &[Template] = &[
    ("Cargo.toml", template!("rust-operator/Cargo.toml.tmpl")),
    ("src/lib.rs", template!("rust-operator/src/lib.rs.tmpl")),
    ("Makefile", template!("rust-operator/Makefile.tmpl")),
    ("README.md", template!("rust-operator/README.md.tmpl")),
    (".gitignore", template!("rust-operator/gitignore.tmpl")),
];

const RUST_POLICY: &[Template] = &[
    ("Cargo.toml", template!("rust-policy/Cargo.toml.tmpl")),
    ("src/lib.rs", template!("rust-policy/src/lib.rs.tmpl")),
    ("Makefile", template!("rust-policy/Makefile.tmpl")),
    ("README.md", template!("rust-policy/README.md.tmpl")),
    (".gitignore", template!("rust-policy/gitignore.tmpl")),
];

const PYTHON_OPERATOR: &[Template] = &[
    ("plugin.py", template!("python-operator/plugin.py.tmpl")),
    ("test_plugin.py", template!("python-operator/test_plugin.py.tmpl")),
    ("Makefile", template!("python-operator/Makefile.tmpl")),
    ("README.md", template!("python-operator/README.md.tmpl")),
    ("requirements.txt", template!("python-operator/requirements.txt.tmpl")),
    (".gitignore", template!("python-operator/gitignore.tmpl")),
];

const PYTHON_POLICY: &[Template] = &[
    ("plugin.py", template!("python-policy/plugin.py.tmpl")),
    ("test_plugin.py", template!("python-policy/test_plugin.py.tmpl")),
    ("Makefile", template!("python-policy/Makefile.tmpl")),
    ("README.md", template!("python-policy/README.md.tmpl")),
    ("requirements.txt", template!("python-operator/requirements.txt.tmpl")),
    (".gitignore", template!("python-operator/gitignore.tmpl")),
];

const JS_OPERATOR: &[Template] = &[
    ("plugin.js", template!("js-operator/plugin.js.tmpl")),
    ("plugin.test.mjs", template!("js-operator/plugin.test.mjs.tmpl")),
    ("Makefile", template!("js-operator/Makefile.tmpl")),
    ("package.json", template!("js-operator/package.json.tmpl")),
    ("README.md", template!("js-operator/README.md.tmpl")),
    (".gitignore", template!("js-operator/gitignore.tmpl")),
];

const JS_POLICY: &[Template] = &[
    ("plugin.js", template!("js-policy/plugin.js.tmpl")),
    ("plugin.test.mjs", template!("js-policy/plugin.test.mjs.tmpl")),
    ("Makefile", template!("js-policy/Makefile.tmpl")),
    ("package.json", template!("js-operator/package.json.tmpl")),
    ("README.md", template!("js-policy/README.md.tmpl")),
    (".gitignore", template!("js-operator/gitignore.tmpl")),
];

/// An operator's example and golden cases, in every language: a `{{Kind}}` and its ConfigMap.
const OPERATOR_CASES: &[Template] = &[
    ("examples/sample.yaml", template!("rust-operator/examples/sample.yaml.tmpl")),
    ("tests/greets.yaml", template!("rust-operator/tests/greets.yaml.tmpl")),
    ("tests/empty-greeting.yaml", template!("rust-operator/tests/empty-greeting.yaml.tmpl")),
];

/// A policy's example and golden cases, in every language: Appoperator parents (wasmop's
/// default plugin, the Makefile's `OPERATOR`) whose Deployments the policy reviews.
const POLICY_CASES: &[Template] = &[
    ("examples/appoperator.yaml", template!("rust-policy/examples/appoperator.yaml.tmpl")),
    ("tests/within-limit.yaml", template!("rust-policy/tests/within-limit.yaml.tmpl")),
    ("tests/too-many-replicas.yaml", template!("rust-policy/tests/too-many-replicas.yaml.tmpl")),
];

/// The versions every crate was tested with here: a new Rust project starts from them.
const CARGO_LOCK: Template = ("Cargo.lock", vendored!("Cargo.lock"));

/// The contract, for the Python and JavaScript component builders.
const WIT: Template = ("wit/plugin.wit", vendored!("wit/plugin.wit"));

/// The Python helper; its pin is taken from the Python example's requirements.
const PYTHON_FILES: &[Template] = &[("wasmop_plugin.py", vendored!("plugins/sdk-python/wasmop_plugin.py")), WIT];
const PYTHON_REQUIREMENTS: &str = vendored!("examples/python-operator/requirements.txt");
const JS_PACKAGE: &str = vendored!("plugins/sdk-js/package.json");

/// The JavaScript helper, the lockfile of the pinned componentize-qjs (the project's
/// package.json takes its devDependencies from the helper's) and the shim that makes its builds
/// reproducible.
const JS_FILES: &[Template] = &[
    ("wasmop-plugin.js", vendored!("plugins/sdk-js/wasmop-plugin.js")),
    ("package-lock.json", vendored!("plugins/sdk-js/package-lock.json")),
    ("shim/deterministic.c", vendored!("plugins/sdk-js/tools/deterministic.c")),
    WIT,
];

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !wasmop::names::is_dns_label(&args.name) {
        bail!("{:?} is not a valid plugin name: use a lowercase DNS label (a-z, 0-9, '-'), e.g. demo", args.name);
    }
    let dir = PathBuf::from(&args.name);
    if dir.exists() {
        bail!("{} already exists; choose another name or remove it", dir.display());
    }
    let vars = variables(&args)?;
    let (templates, cases, vendored): (&[Template], &[Template], &[Template]) = match (args.lang, args.world) {
        (Lang::Rust, World::Operator) => (RUST_OPERATOR, OPERATOR_CASES, &[CARGO_LOCK]),
        (Lang::Rust, World::Policy) => (RUST_POLICY, POLICY_CASES, &[CARGO_LOCK]),
        (Lang::Python, World::Operator) => (PYTHON_OPERATOR, OPERATOR_CASES, PYTHON_FILES),
        (Lang::Python, World::Policy) => (PYTHON_POLICY, POLICY_CASES, PYTHON_FILES),
        (Lang::Js, World::Operator) => (JS_OPERATOR, OPERATOR_CASES, JS_FILES),
        (Lang::Js, World::Policy) => (JS_POLICY, POLICY_CASES, JS_FILES),
    };
    for (path, text) in templates.iter().chain(cases) {
        write(&dir.join(path), &render(text, &vars))?;
    }
    for (path, text) in vendored {
        write(&dir.join(path), text)?;
    }
    let lang = args.lang.title();
    match args.world {
        World::Operator => {
            println!(
                "created {} ({lang} operator plugin, kind {} in {})",
                dir.display(),
                kind_of(&args.name),
                args.group
            );
            println!("next: cd {} && make && make test && make eval", dir.display());
        }
        World::Policy => {
            println!(
                "created {} ({lang} policy plugin: Deployments and StatefulSets get at most maxReplicas replicas)",
                dir.display()
            );
            let operator = appoperator().unwrap_or_else(|| "/path/to/appoperator.wasm".into());
            println!("its golden cases review the children of Appoperator, wasmop's default plugin:");
            println!("next: cd {} && make && make test eval OPERATOR={operator}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The placeholders of the templates and their values.
fn variables(args: &Args) -> anyhow::Result<Vec<(&'static str, String)>> {
    let kind = kind_of(&args.name);
    let singular = kind.to_lowercase();
    let sdk = match args.lang {
        Lang::Rust => sdk_dependency(args.sdk.as_deref())?,
        Lang::Python | Lang::Js => String::new(),
    };
    Ok(vec![
        ("{{name}}", args.name.clone()),
        ("{{crate}}", args.name.replace('-', "_")),
        ("{{Kind}}", kind),
        ("{{singular}}", singular.clone()),
        ("{{plural}}", format!("{singular}s")),
        ("{{group}}", args.group.clone()),
        ("{{sdk}}", sdk),
        ("{{componentize_py}}", componentize_py_pin()),
        ("{{js_dev_dependencies}}", js_dev_dependencies()),
    ])
}

/// The `componentize-py==X.Y.Z` line the Python example (and the helper) is tested with.
fn componentize_py_pin() -> String {
    let pin = PYTHON_REQUIREMENTS.lines().find(|line| line.starts_with("componentize-py=="));
    pin.expect("examples/python-operator/requirements.txt pins componentize-py").trim().to_string()
}

/// The helper's pinned devDependencies (`{"componentize-qjs": "X.Y.Z"}`), which its lockfile
/// resolves.
fn js_dev_dependencies() -> String {
    let package: serde_json::Value = serde_json::from_str(JS_PACKAGE).expect("plugins/sdk-js/package.json is JSON");
    let pins = package["devDependencies"].as_object().expect("plugins/sdk-js/package.json has devDependencies");
    let pins: Vec<String> =
        pins.iter().map(|(name, version)| format!("{}: {version}", serde_json::Value::from(name.as_str()))).collect();
    format!("{{{}}}", pins.join(", "))
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

/// Appoperator as this wasmop's source tree builds it (`make plugins`), if it is there: what a
/// policy project's `OPERATOR` can name.
fn appoperator() -> Option<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin/appoperator.wasm");
    path.canonicalize().ok().map(|path| path.display().to_string())
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
