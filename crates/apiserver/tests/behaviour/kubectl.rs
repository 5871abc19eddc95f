//! The machine's real kubectl through a written kubeconfig, against the in-memory server and the
//! real control plane (`crates/controlplane`) from the same test code: where they disagree, the
//! real one is right.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use wasmop_apiserver::{ApiServer, Config};
use wasmop_controlplane::ControlPlane;

use crate::common::{client, eventually, server_with};

/// A test's API server: a fresh in-memory one, or a fresh namespace on the shared real one.
struct Target {
    memory: Option<ApiServer>,
    client: kube::Client,
    /// The test's namespace (kubectl's default through the kubeconfig's context).
    ns: String,
    kubeconfig: String,
}

impl Target {
    async fn memory() -> Target {
        let server = server_with(Config::default()).await;
        let kubeconfig = server.kubeconfig_yaml();
        Target { client: client(&server), memory: Some(server), ns: "default".into(), kubeconfig }
    }

    async fn real() -> Target {
        let plane = ControlPlane::shared().await.unwrap_or_else(|e| panic!("real control plane: {e}"));
        let client = plane.client().await.unwrap();
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let ns = format!("kubectl-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let namespace: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        Api::all(client.clone()).create(&PostParams::default(), &namespace).await.unwrap();
        Target { memory: None, client, ns, kubeconfig: plane.kubeconfig_yaml().to_string() }
    }

    fn is_real(&self) -> bool {
        self.memory.is_none()
    }

    async fn shutdown(self) {
        if let Some(server) = self.memory {
            server.shutdown().await;
        }
    }
}

/// Runs the scenario `$name(t: Target)` as `$name::memory` and `$name::real`.
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(super::Target::memory().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn real() {
                super::$name(super::Target::real().await).await
            }
        }
    )+};
}

on_both_backends!(
    kubectl_server_side_apply_get_yaml_and_invalid_object,
    kubectl_get_watch_sees_a_change,
    kubectl_wait_for_condition_ready,
    kubectl_delete_cascades_and_api_resources,
    kubectl_typed_create_commands_work,
);

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Image, type: string, jsonPath: .spec.image}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [image]
            properties:
              image: {type: string}
              replicas: {type: integer, minimum: 0, maximum: 10, default: 1}
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
"#;

const WIDGET: &str = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  image: nginx\n";

fn kubectl_path() -> PathBuf {
    if let Ok(p) = std::env::var("KUBECTL") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("kubectl");
        if p.is_file() {
            return p;
        }
    }
    panic!("kubectl not found on PATH (set KUBECTL=/path/to/kubectl)");
}

struct Kubectl {
    _dir: tempfile::TempDir,
    config: PathBuf,
}

impl Kubectl {
    /// kubectl with `t`'s kubeconfig, its context's namespace set to `t.ns`.
    fn new(t: &Target) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("kubeconfig");
        let mut kubeconfig: serde_json::Value = serde_saphyr::from_str(&t.kubeconfig).unwrap();
        for context in kubeconfig["contexts"].as_array_mut().unwrap() {
            context["context"]["namespace"] = json!(t.ns);
        }
        std::fs::write(&config, serde_json::to_string(&kubeconfig).unwrap()).unwrap();
        Kubectl { _dir: dir, config }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(kubectl_path());
        c.env("KUBECONFIG", &self.config)
            .env("HOME", self._dir.path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    async fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut cmd = self.command(args);
        let stdin = stdin.to_string();
        tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().expect("kubectl runs");
            if let Some(mut i) = child.stdin.take() {
                let _ = i.write_all(stdin.as_bytes());
            }
            child.wait_with_output().expect("kubectl finishes")
        })
        .await
        .unwrap()
    }

    async fn ok(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run(args, stdin).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn widgets(t: &Target) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.com", "v1", "Widget"), "widgets");
    Api::namespaced_with(t.client.clone(), &t.ns, &ar)
}

async fn kubectl_server_side_apply_get_yaml_and_invalid_object(t: Target) {
    let k = Kubectl::new(&t);
    let out = k.ok(&["apply", "--server-side", "-f", "-"], CRD).await;
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/widgets.example.com serverside-applied"),
        "{out}"
    );
    let out = k.ok(&["apply", "--server-side", "-f", "-"], WIDGET).await;
    assert!(out.contains("widget.example.com/w1 serverside-applied"), "{out}");

    let yaml = k.ok(&["get", "widget", "w1", "-o", "yaml"], "").await;
    assert!(yaml.contains("kind: Widget"), "{yaml}");
    assert!(yaml.contains("replicas: 1"), "default applied: {yaml}");
    assert!(yaml.contains("uid: "), "{yaml}");
    let table = k.ok(&["get", "wd"], "").await;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("IMAGE") && table.contains("nginx"), "{table}");

    // Re-applying with a change works, and the manager is kubectl.
    let changed = WIDGET.replace("image: nginx", "image: nginx:2");
    k.ok(&["apply", "--server-side", "-f", "-"], &changed).await;
    let obj = widgets(&t).get("w1").await.unwrap();
    assert_eq!(obj.data["spec"]["image"], "nginx:2");
    let managers: Vec<String> = obj.managed_fields().iter().filter_map(|m| m.manager.clone()).collect();
    assert_eq!(managers, vec!["kubectl"]);

    let bad = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: bad\nspec:\n  replicas: 50\n";
    let out = k.run(&["apply", "--server-side", "-f", "-"], bad).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("The Widget \"bad\" is invalid"), "{err}");
    assert!(
        err.contains("spec.replicas: Invalid value: 50: spec.replicas in body should be less than or equal to 10"),
        "{err}"
    );
    assert!(err.contains("spec.image: Required value"), "{err}");

    // kubectl validates strictly on the server: a misspelt built-in field is refused.
    let typo = DEPLOYMENT.replace("replicas: 2", "replicass: 2");
    let out = k.run(&["apply", "--server-side", "-f", "-"], &typo).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(".spec.replicass: field not declared in schema"), "{err}");

    // Client-side apply too (create, then a patch computed by kubectl).
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: csa\ndata:\n  a: \"1\"\n";
    k.ok(&["apply", "-f", "-"], cm).await;
    k.ok(&["apply", "-f", "-"], &cm.replace("\"1\"", "\"2\"")).await;
    let got = Api::<ConfigMap>::namespaced(t.client.clone(), &t.ns).get("csa").await.unwrap();
    assert_eq!(got.data.unwrap()["a"], "2");

    // Moving from client-side to server-side apply: the real server lets the change apply
    // without a conflict; the in-memory one reports the changed field's client-side owner (a
    // known difference, see README).
    k.ok(&["apply", "-f", "-"], DEPLOYMENT).await;
    let scaled = DEPLOYMENT.replace("replicas: 2", "replicas: 3");
    if t.is_real() {
        k.ok(&["apply", "--server-side", "-f", "-"], &scaled).await;
    } else {
        let out = k.run(&["apply", "--server-side", "-f", "-"], &scaled).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("conflict with \"kubectl-client-side-apply\" using apps/v1 at "), "{err}");
        k.ok(&["apply", "--server-side", "--force-conflicts", "-f", "-"], &scaled).await;
    }
    // Another manager's field does conflict.
    let deployments = Api::<Deployment>::namespaced(t.client.clone(), &t.ns);
    deployments
        .patch(
            "web",
            &PatchParams::apply("other").force(),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 4},
            })),
        )
        .await
        .unwrap();
    let out = k.run(&["apply", "--server-side", "-f", "-"], &scaled).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Apply failed with 1 conflict: conflict with \"other\": .spec.replicas"), "{err}");
    k.ok(&["apply", "--server-side", "--force-conflicts", "-f", "-"], &scaled).await;
    let d = Api::<Deployment>::namespaced(t.client.clone(), &t.ns).get("web").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(3));

    // A container dropped from the applied manifest disappears entirely (defaults and all),
    // so kubectl's own strategic-merge edits keep working.
    let two = DEPLOYMENT.replace(
        "      - {name: web, image: nginx}",
        "      - {name: web, image: nginx}\n      - {name: side, image: redis}",
    );
    k.ok(&["apply", "--server-side", "--force-conflicts", "-f", "-"], &two).await;
    k.ok(&["apply", "--server-side", "--force-conflicts", "-f", "-"], &scaled).await;
    let d = Api::<Deployment>::namespaced(t.client.clone(), &t.ns).get("web").await.unwrap();
    let names: Vec<String> = d.spec.unwrap().template.spec.unwrap().containers.into_iter().map(|c| c.name).collect();
    assert_eq!(names, vec!["web"]);
    let mut edit = k.command(&["edit", "deployment", "web"]);
    edit.env("EDITOR", "sed -i s/image:.nginx$/image:\\ nginx:2/");
    let out = tokio::task::spawn_blocking(move || edit.output().unwrap()).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d = Api::<Deployment>::namespaced(t.client.clone(), &t.ns).get("web").await.unwrap();
    assert_eq!(d.spec.unwrap().template.spec.unwrap().containers[0].image.as_deref(), Some("nginx:2"));
    t.shutdown().await;
}

async fn kubectl_get_watch_sees_a_change(t: Target) {
    let k = Kubectl::new(&t);
    let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), &t.ns);
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "watched"}, "data": {"v": "1"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let mut child = k
        .command(&["get", "configmap", "watched", "-w", "-o", "jsonpath={.metadata.name}={.data.v}{\"\\n\"}"])
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    assert_eq!(first, "watched=1");
    // kubectl starts its watch after the first GET; a change made before the watch is up may
    // not be shown, so change the object until a change arrives (at most five times).
    let mut seen = None;
    for v in 2..=6 {
        cms.patch("watched", &PatchParams::default(), &Patch::Merge(json!({"data": {"v": v.to_string()}})))
            .await
            .unwrap();
        if let Ok(line) = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
            seen = line.map(|l| (l, v));
            break;
        }
    }
    let (line, v) = seen.expect("kubectl get -w printed no change");
    let shown: u32 = line.strip_prefix("watched=").and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!((2..=v).contains(&shown), "{line} after setting v={v}");
    let _ = child.kill();
    let _ = child.wait();
    t.shutdown().await;
}

async fn kubectl_wait_for_condition_ready(t: Target) {
    let k = Kubectl::new(&t);
    k.ok(&["apply", "--server-side", "-f", "-"], CRD).await;
    k.ok(&["apply", "--server-side", "-f", "-"], WIDGET).await;
    let api = widgets(&t);
    let waiter = {
        let cmd = k.command(&["wait", "--for=condition=Ready", "widget/w1", "--timeout=20s"]);
        tokio::task::spawn_blocking(move || {
            let mut cmd = cmd;
            cmd.output().unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.patch_status(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Test", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})),
    )
    .await
    .unwrap();
    let out = waiter.await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("widget.example.com/w1 condition met"));
    t.shutdown().await;
}

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: nginx}
"#;

async fn kubectl_delete_cascades_and_api_resources(t: Target) {
    let k = Kubectl::new(&t);
    let c = t.client.clone();
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), &t.ns);
    let deps: Api<Deployment> = Api::namespaced(c.clone(), &t.ns);
    for (policy, child_survives) in [("foreground", false), ("background", false), ("orphan", true)] {
        k.ok(&["apply", "-f", "-"], DEPLOYMENT).await;
        let owner = deps.get("web").await.unwrap();
        let mut r = owner.controller_owner_ref(&()).unwrap();
        r.block_owner_deletion = Some(true);
        let child: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": "web-child", "ownerReferences": [r]}})).unwrap();
        cms.create(&PostParams::default(), &child).await.unwrap();
        let out = k.ok(&["delete", "deployment", "web", &format!("--cascade={policy}")], "").await;
        assert!(out.contains("deployment.apps \"web\" deleted"), "{out}");
        eventually(30, "owner gone", || async { deps.get_opt("web").await.unwrap().is_none().then_some(()) }).await;
        // The real garbage collector works after the owner is gone: wait for its outcome.
        if child_survives {
            eventually(30, "ownerReference removed", || async {
                cms.get("web-child").await.unwrap().owner_references().is_empty().then_some(())
            })
            .await;
            cms.delete("web-child", &Default::default()).await.unwrap();
        }
        eventually(30, "child gone", || async { cms.get_opt("web-child").await.unwrap().is_none().then_some(()) })
            .await;
    }
    k.ok(&["apply", "--server-side", "-f", "-"], CRD).await;
    let out = k.ok(&["api-resources"], "").await;
    for needle in ["deployments", "configmaps", "customresourcedefinitions", "widgets"] {
        assert!(out.lines().any(|l| l.starts_with(needle)), "{needle} missing: {out}");
    }
    let line = out.lines().find(|l| l.starts_with("widgets")).unwrap();
    assert!(
        line.contains("wd") && line.contains("example.com/v1") && line.contains("true") && line.contains("Widget"),
        "{line}"
    );
    t.shutdown().await;
}

async fn kubectl_typed_create_commands_work(t: Target) {
    let k = Kubectl::new(&t);
    k.ok(&["create", "namespace", "team"], "").await;
    k.ok(&["create", "configmap", "settings", "-n", "team", "--from-literal=mode=fast"], "").await;
    k.ok(&["create", "secret", "generic", "creds", "-n", "team", "--from-literal=password=s3cret"], "").await;
    let c = t.client.clone();
    let cm = Api::<ConfigMap>::namespaced(c.clone(), "team").get("settings").await.unwrap();
    assert_eq!(cm.data.unwrap()["mode"], "fast");
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c, "team").get("creds").await.unwrap();
    assert_eq!(secret.data.unwrap()["password"].0, b"s3cret");
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    // Access reviews: the admin may do everything (the in-memory server authorizes everything).
    assert_eq!(k.ok(&["auth", "can-i", "create", "deployments"], "").await.trim(), "yes");
    let whoami = k.ok(&["auth", "whoami"], "").await;
    assert!(whoami.contains(if t.is_real() { "wasmop-admin" } else { "wasmop" }), "{whoami}");
    k.ok(&["create", "deployment", "web", "--image=nginx:1.27", "--port=80", "--replicas=2"], "").await;
    let d = Api::<Deployment>::namespaced(t.client.clone(), &t.ns).get("web").await.unwrap();
    assert_eq!(d.labels().get("app").map(String::as_str), Some("web"));
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let c = &spec.template.spec.unwrap().containers[0];
    assert_eq!((c.name.as_str(), c.image.as_deref()), ("nginx", Some("nginx:1.27")));
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 80);
    // The in-memory server refuses kinds whose protobuf form it does not decode, clearly.
    let out = k.run(&["create", "job", "once", "--image=busybox"], "").await;
    if t.is_real() {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    } else {
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("protobuf is supported only for"));
    }
    k.ok(&["delete", "namespace", "team", "--wait=false"], "").await;
    t.shutdown().await;
}
