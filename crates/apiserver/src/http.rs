//! HTTP: accepting connections, routing URLs to discovery, OpenAPI and resource handlers,
//! request decoding and response encoding.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::convert;
use crate::error::{ApiResult, StatusError};
use crate::faults::Faults;
use crate::output::{self, Shape};
use crate::resources::ResourceInfo;
use crate::selector::{FieldSelector, LabelSelector};
use crate::stats::RequestStats;
use crate::store::{DeleteOpts, Deleted, PatchType, State, WriteOpts};
use crate::watch::{self as watchmod, WatchSpec};
use crate::{Config, discovery, openapi};

/// Largest request body accepted, as kube-apiserver's default (3 MiB).
const MAX_BODY_BYTES: usize = 3 << 20;

/// Most times a write runs to collect the webhook conversions it needs (a patch needs two:
/// the stored object into the request's version, the result into the storage version).
const MAX_CONVERSION_ROUNDS: usize = 8;

/// Response body type.
pub type Body = BoxBody<Bytes, Infallible>;

/// State shared by all connections.
pub struct Shared {
    /// The store.
    pub state: Arc<Mutex<State>>,
    /// Fault injection.
    pub faults: Faults,
    /// Request counters.
    pub stats: Mutex<RequestStats>,
    /// Configuration.
    pub config: Config,
    /// Shutdown signal.
    pub shutdown: watch::Receiver<bool>,
    /// Bound address.
    pub addr: SocketAddr,
}

fn full(code: u16, content_type: &str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body).boxed());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    full(code, "application/json", Bytes::from(v.to_string()))
}

fn error_response(e: &StatusError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

fn lock(shared: &Shared) -> Result<std::sync::MutexGuard<'_, State>, StatusError> {
    shared.state.lock().map_err(|_| StatusError::internal("state lock poisoned"))
}

/// Runs `op` under the store's lock. When it needs a webhook conversion it does not have yet
/// (see [`convert::Memo`]), the lock is released, the webhook called, and `op` runs again.
async fn locked<T>(shared: &Shared, mut op: impl FnMut(&mut State) -> ApiResult<T>) -> ApiResult<T> {
    let mut memo = convert::Memo::default();
    for _ in 0..MAX_CONVERSION_ROUNDS {
        let pending = {
            let mut st = lock(shared)?;
            st.memo = std::mem::take(&mut memo);
            let result = op(&mut st);
            memo = std::mem::take(&mut st.memo);
            match memo.take_pending() {
                Some(p) => p,
                None => return result,
            }
        };
        let objects = std::slice::from_ref(&pending.object);
        let converted = crate::webhook::convert(&pending.conv, objects, &pending.desired, false).await?;
        memo.insert(&pending, converted.into_iter().next().unwrap_or_default());
    }
    Err(StatusError::internal("the object kept changing while its conversion webhook was called; try again"))
}

/// Entry point for every request.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let latency = shared.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let h = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let accept = h(header::ACCEPT);
    let content_type = h(header::CONTENT_TYPE);
    let user_agent = h(header::USER_AGENT);
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let message = format!("Request entity too large: limit is {MAX_BODY_BYTES}");
            return Ok(error_response(&StatusError::new(413, "RequestEntityTooLarge", message)));
        }
        Err(e) => {
            return Ok(error_response(&StatusError::bad_request(format!("reading body: {e}"))));
        }
    };
    tracing::debug!(%method, %path, "request");
    let ctx = Ctx { method, query, accept, content_type, user_agent, body };
    Ok(route(&shared, &path, ctx).await)
}

struct Ctx {
    method: Method,
    query: HashMap<String, String>,
    accept: String,
    content_type: String,
    user_agent: String,
    body: Bytes,
}

impl Ctx {
    fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.q(k), Some("true" | "1"))
    }
}

fn not_found_page() -> Response<Body> {
    json_response(
        404,
        &StatusError::new(404, "NotFound", "the server could not find the requested resource").to_status(),
    )
}

async fn route(shared: &Arc<Shared>, path: &str, ctx: Ctx) -> Response<Body> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get = ctx.method == Method::GET;
    let registry = match lock(shared) {
        Ok(s) => s.registry.clone(),
        Err(e) => return error_response(&e),
    };
    match segs.as_slice() {
        ["version"] if get => json_response(200, &discovery::version()),
        ["healthz" | "livez" | "readyz", ..] if get => full(200, "text/plain", Bytes::from_static(b"ok")),
        ["api" | "apis"] if get && discovery::wants_aggregated(&ctx.accept).is_some() => {
            let v = discovery::wants_aggregated(&ctx.accept).unwrap_or("v2");
            let doc = discovery::aggregated(&registry, segs[0] == "api", v);
            full(
                200,
                &format!("application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"),
                Bytes::from(doc.to_string()),
            )
        }
        ["api"] if get => json_response(200, &discovery::core_versions(&shared.addr.to_string())),
        ["apis"] if get => json_response(200, &discovery::groups(&registry)),
        ["apis", g] if get => match discovery::group(&registry, g) {
            Some(v) => json_response(200, &v),
            None => not_found_page(),
        },
        ["api", "v1"] if get => match discovery::resource_list(&registry, "", "v1") {
            Some(v) => json_response(200, &v),
            None => not_found_page(),
        },
        ["apis", g, v] if get => match discovery::resource_list(&registry, g, v) {
            Some(doc) => json_response(200, &doc),
            None => not_found_page(),
        },
        ["openapi", "v2"] if get => json_response(200, &openapi::v2(&registry)),
        ["openapi", "v3"] if get => json_response(200, &openapi::index(&registry)),
        ["openapi", "v3", "api", v] if get => match openapi::group_version(&registry, "", v) {
            Some(doc) => json_response(200, &doc),
            None => not_found_page(),
        },
        ["openapi", "v3", "apis", g, v] if get => match openapi::group_version(&registry, g, v) {
            Some(doc) => json_response(200, &doc),
            None => not_found_page(),
        },
        ["api", "v1", rest @ ..] => resource_route(shared, &registry, "", "v1", rest, ctx).await,
        ["apis", g, v, rest @ ..] => resource_route(shared, &registry, g, v, rest, ctx).await,
        _ => not_found_page(),
    }
}

struct Target {
    info: Arc<ResourceInfo>,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn resolve(reg: &crate::resources::Registry, group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let mk = |plural: &str, ns: Option<&str>, name: Option<&&str>, sub: Option<&&str>| -> Option<Target> {
        let info = reg.get(group, version, plural)?;
        if info.namespaced != ns.is_some() && !(info.namespaced && ns.is_none() && name.is_none()) {
            return None;
        }
        Some(Target {
            info,
            ns: ns.map(str::to_string),
            name: name.map(|s| s.to_string()),
            sub: sub.map(|s| s.to_string()),
        })
    };
    if rest.len() > 5 {
        return None;
    }
    if rest.first() == Some(&"namespaces")
        && rest.len() >= 3
        && let Some(t) = mk(rest[2], Some(rest[1]), rest.get(3), rest.get(4))
    {
        return Some(t);
    }
    if rest.len() > 3 {
        return None;
    }
    mk(rest.first()?, None, rest.get(1), rest.get(2))
}

async fn resource_route(
    shared: &Arc<Shared>,
    reg: &crate::resources::Registry,
    group: &str,
    version: &str,
    rest: &[&str],
    mut ctx: Ctx,
) -> Response<Body> {
    let mut rest = rest.to_vec();
    if rest.first() == Some(&"watch") {
        rest.remove(0);
        ctx.query.insert("watch".into(), "true".into());
    }
    let Some(target) = resolve(reg, group, version, &rest) else {
        return not_found_page();
    };
    let verb = match (&ctx.method, target.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if ctx.flag("watch") => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, false) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        (m, _) => {
            return error_response(&StatusError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({m})"
            )));
        }
    };
    let resource = match &target.sub {
        Some(s) => format!("{}/{s}", target.info.plural),
        None => target.info.plural.clone(),
    };
    if let Ok(mut st) = shared.stats.lock() {
        st.record(verb, &resource);
    }
    if let Some(code) = shared.faults.take(verb, &resource) {
        return error_response(&StatusError::from_code(code, format!("injected fault: {verb} {resource}")));
    }
    if target.info.is_review() {
        if verb != "create" {
            return error_response(&StatusError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({verb} {resource})"
            )));
        }
        return match parse_json(&ctx) {
            Ok(body) => json_response(201, &review(&target.info, body)),
            Err(e) => error_response(&e),
        };
    }
    if let Some(sub) = &target.sub
        && !((sub == "status" && target.info.status) || (sub == "scale" && target.info.scale.is_some()))
    {
        return not_found_page();
    }
    if target.sub.as_deref() == Some("scale") {
        return match do_scale(shared, &target, verb, &ctx).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
    }
    let result = match verb {
        "get" => do_get(shared, &target, &ctx).await,
        "list" => do_list(shared, &target, &ctx).await,
        "watch" => return do_watch(shared, target, &ctx),
        "create" => do_create(shared, &target, &ctx).await,
        "update" => do_update(shared, &target, &ctx).await,
        "patch" => do_patch(shared, &target, &ctx).await,
        "delete" => do_delete(shared, &target, &ctx).await,
        _ => do_delete_collection(shared, &target, &ctx).await,
    };
    match result {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

type HResult = Result<Response<Body>, StatusError>;

/// The answer to an access or token review: this server authorizes everything, for everyone.
fn review(info: &ResourceInfo, mut body: Value) -> Value {
    body["apiVersion"] = json!(info.api_version());
    body["kind"] = json!(info.kind);
    let user = json!({"username": "wasmop", "groups": ["system:masters", "system:authenticated"]});
    body["status"] = match info.kind.as_str() {
        "SelfSubjectRulesReview" => json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false,
        }),
        "SelfSubjectReview" => json!({"userInfo": user}),
        "TokenReview" => json!({"authenticated": true, "user": user}),
        _ => json!({"allowed": true, "reason": "wasmop-apiserver authorizes every request"}),
    };
    body
}

fn parse_json(ctx: &Ctx) -> Result<Value, StatusError> {
    if ctx.content_type.contains("protobuf") {
        return crate::proto::decode(&ctx.body);
    }
    if ctx.content_type.contains("cbor") {
        return Err(StatusError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {})",
            ctx.content_type
        )));
    }
    if ctx.content_type.contains("yaml") {
        let text = std::str::from_utf8(&ctx.body).map_err(|e| StatusError::bad_request(e.to_string()))?;
        return serde_saphyr::from_str::<Value>(text)
            .map_err(|e| StatusError::bad_request(format!("error decoding YAML: {e}")));
    }
    serde_json::from_slice(&ctx.body).map_err(|e| StatusError::bad_request(format!("error decoding JSON: {e}")))
}

fn write_opts(ctx: &Ctx, target: &Target) -> WriteOpts {
    let manager = match ctx.q("fieldManager") {
        Some(m) => m.to_string(),
        None => ctx.user_agent.split('/').next().unwrap_or("").to_string(),
    };
    WriteOpts {
        manager,
        dry_run: ctx.q("dryRun") == Some("All"),
        strict: ctx.q("fieldValidation") == Some("Strict"),
        subresource: target.sub.clone().unwrap_or_default(),
    }
}

fn ns_of(t: &Target) -> &str {
    t.ns.as_deref().unwrap_or("")
}

async fn do_get(shared: &Shared, t: &Target, ctx: &Ctx) -> HResult {
    let obj = lock(shared)?.get(&t.info, ns_of(t), t.name.as_deref().unwrap_or(""))?;
    let shape = output::negotiate(&ctx.accept);
    // Metadata-only responses need no conversion.
    let obj = if shape == Shape::Metadata { obj } else { convert::finish_one(&t.info, obj).await? };
    Ok(json_response(200, &output::shape_object(&t.info, shape, &obj, true)))
}

fn selectors(shared: &Shared, t: &Target, ctx: &Ctx) -> Result<(LabelSelector, FieldSelector), StatusError> {
    let fields = FieldSelector::parse(ctx.q("fieldSelector").unwrap_or(""), &t.info.kind)?;
    let fields = match ctx.q("shardSelector") {
        Some(shards) if shared.config.shard_selector => fields.with_shards(shards)?,
        _ => fields,
    };
    Ok((LabelSelector::parse(ctx.q("labelSelector").unwrap_or(""))?, fields))
}

async fn do_list(shared: &Shared, t: &Target, ctx: &Ctx) -> HResult {
    let (labels, fields) = selectors(shared, t, ctx)?;
    // resourceVersion=0 is served from the watch cache, which ignores limit.
    let limit = match ctx.q("limit").filter(|_| ctx.q("resourceVersion") != Some("0")) {
        Some(l) => Some(l.parse::<usize>().map_err(|_| StatusError::bad_request(format!("invalid limit {l:?}")))?),
        None => None,
    };
    let page = {
        let st = lock(shared)?;
        st.list(&t.info, t.ns.as_deref(), &labels, &fields, limit, ctx.q("continue"))?
    };
    // Serialize outside the lock, straight from the stored objects.
    let shape = output::negotiate(&ctx.accept);
    let items = if shape == Shape::Metadata { page.items } else { convert::finish(&t.info, page.items, true).await? };
    let rv = page.rv.to_string();
    let mut md = json!({"resourceVersion": rv});
    if let Some(c) = &page.cont {
        md["continue"] = json!(c);
    }
    if let Some(r) = page.remaining {
        md["remainingItemCount"] = json!(r);
    }
    if fields.sharded() {
        md["shardInfo"] = json!({"selector": ctx.q("shardSelector")});
    }
    let (api_version, kind) = match shape {
        Shape::Table => {
            let presented: Vec<Value> = items.iter().map(|o| State::present(&t.info, o)).collect();
            let table =
                output::table(&t.info, &presented, &rv, page.cont.as_deref(), ctx.q("includeObject") != Some("None"));
            return Ok(json_response(200, &table));
        }
        Shape::Metadata => ("meta.k8s.io/v1".to_string(), "PartialObjectMetadataList".to_string()),
        Shape::Full => (t.info.api_version(), format!("{}List", t.info.kind)),
    };
    let mut out = String::with_capacity(128 + items.len() * 512);
    out.push_str(&format!(
        "{{\"apiVersion\":{},\"kind\":{},\"metadata\":{},\"items\":[",
        json!(api_version),
        json!(kind),
        md
    ));
    let served = t.info.api_version();
    for (i, o) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let presented;
        let o = match shape {
            Shape::Full if o.get("apiVersion").and_then(Value::as_str) != Some(served.as_str()) => {
                presented = State::present(&t.info, o);
                &presented
            }
            _ => &**o,
        };
        let item = match shape {
            Shape::Metadata => output::partial(o).to_string(),
            _ if t.info.custom => o.to_string(),
            _ => output::list_item(o),
        };
        out.push_str(&item);
    }
    out.push_str("]}");
    Ok(full(200, "application/json", Bytes::from(out)))
}

fn do_watch(shared: &Arc<Shared>, t: Target, ctx: &Ctx) -> Response<Body> {
    let (labels, fields) = match selectors(shared, &t, ctx) {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    let timeout = ctx
        .q("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(shared.config.default_watch_timeout);
    let spec = WatchSpec {
        info: t.info.clone(),
        namespace: t.ns.clone(),
        labels: labels.clone(),
        fields: fields.clone(),
        bookmarks: ctx.flag("allowWatchBookmarks"),
        shape: output::negotiate(&ctx.accept),
        timeout,
        bookmark_interval: shared.config.bookmark_interval,
    };
    let send_initial = ctx.flag("sendInitialEvents");
    let rv_param = ctx.q("resourceVersion").unwrap_or("").to_string();
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(256);
    let body_stream = futures::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(body_stream)));
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    let setup = (|| -> Result<_, StatusError> {
        let mut st = lock(shared)?;
        let mut initial = Vec::new();
        let mut initial_end = None;
        let mut backlog = Vec::new();
        let from;
        if send_initial || rv_param.is_empty() || rv_param == "0" {
            let page = st.list(&t.info, t.ns.as_deref(), &labels, &fields, None, None)?;
            from = st.rv;
            initial = page.items;
            initial_end = send_initial.then_some(from);
        } else {
            let n: u64 = rv_param
                .parse()
                .map_err(|_| StatusError::bad_request(format!("invalid resource version: {rv_param}")))?;
            if n < st.compacted {
                return Ok(Err(StatusError::expired(format!("too old resource version: {n} ({})", st.compacted))));
            }
            backlog = st.history.iter().filter(|e| e.rv > n).cloned().collect();
            from = n;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        st.watchers.push(tx);
        Ok(Ok((initial, initial_end, backlog, rx, from)))
    })();
    match setup {
        Err(e) => error_response(&e),
        Ok(Err(expired)) => {
            let line = watchmod::error_line(&expired.to_status());
            tokio::spawn(async move {
                let _ = out_tx.send(line).await;
            });
            response
        }
        Ok(Ok((initial, initial_end, backlog, rx, from))) => {
            let signals = watchmod::Signals { drop: shared.faults.drop_receiver(), shutdown: shared.shutdown.clone() };
            tokio::spawn(watchmod::run(
                spec,
                watchmod::Start { initial, initial_end, backlog, from },
                rx,
                out_tx,
                signals,
            ));
            response
        }
    }
}

async fn do_scale(shared: &Shared, t: &Target, verb: &str, ctx: &Ctx) -> HResult {
    let input = match verb {
        "get" => Value::Null,
        "update" => parse_json(ctx)?,
        "patch" => serde_json::from_slice(&ctx.body)
            .map_err(|e| StatusError::bad_request(format!("error decoding patch: {e}")))?,
        _ => return Err(StatusError::method_not_allowed(format!("{verb} is not allowed on scale"))),
    };
    let obj = if verb == "get" {
        lock(shared)?.get(&t.info, ns_of(t), t.name.as_deref().unwrap_or(""))?
    } else {
        locked(shared, |st| scale_write(st, t, verb, ctx, &input)).await?
    };
    let obj = convert::finish_one(&t.info, obj).await?;
    Ok(json_response(200, &crate::scale::view(&t.info, &obj)?))
}

/// Applies a `/scale` update or patch (`input`) to the object's replicas.
fn scale_write(st: &mut State, t: &Target, verb: &str, ctx: &Ctx, input: &Value) -> ApiResult<Value> {
    let name = t.name.as_deref().unwrap_or("");
    let obj = st.get_for_write(&t.info, ns_of(t), name)?;
    let current = crate::scale::view(&t.info, &obj)?;
    let desired = match verb {
        "update" => input.clone(),
        _ => {
            let mut doc = current.clone();
            match ctx.content_type.split(';').next().unwrap_or("").trim() {
                "application/json-patch+json" => crate::patch::json_patch(&mut doc, input)?,
                _ => crate::patch::merge_patch(&mut doc, input),
            }
            doc
        }
    };
    let want_rv = desired.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("");
    if !want_rv.is_empty() && Some(want_rv) != obj.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
        return Err(StatusError::conflict(&t.info.group, &t.info.plural, name, StatusError::MODIFIED));
    }
    let replicas = desired.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
    if !replicas.is_i64() || replicas.as_i64().is_some_and(|r| r < 0) {
        return Err(StatusError::invalid(
            "autoscaling",
            "Scale",
            name,
            vec![crate::error::Cause::new(
                "FieldValueInvalid",
                "spec.replicas",
                format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            )],
        ));
    }
    let mut opts = write_opts(ctx, t);
    opts.subresource = String::new();
    let patch = crate::scale::replicas_patch(&t.info, &replicas);
    st.patch(&t.info, ns_of(t), name, PatchType::Merge, &patch, false, &opts)
}

async fn do_create(shared: &Shared, t: &Target, ctx: &Ctx) -> HResult {
    if t.sub.is_some() {
        return Err(StatusError::method_not_allowed("create is not allowed on a subresource"));
    }
    let body = parse_json(ctx)?;
    let opts = write_opts(ctx, t);
    let obj = locked(shared, |st| st.create(&t.info, ns_of(t), body.clone(), &opts)).await?;
    Ok(json_response(201, &convert::finish_one(&t.info, obj).await?))
}

async fn do_update(shared: &Shared, t: &Target, ctx: &Ctx) -> HResult {
    let body = parse_json(ctx)?;
    let opts = write_opts(ctx, t);
    let name = t.name.as_deref().unwrap_or("");
    let obj = locked(shared, |st| st.update(&t.info, ns_of(t), name, body.clone(), &opts)).await?;
    Ok(json_response(200, &convert::finish_one(&t.info, obj).await?))
}

async fn do_patch(shared: &Shared, t: &Target, ctx: &Ctx) -> HResult {
    let ct = ctx.content_type.split(';').next().unwrap_or("").trim();
    let kind = match ct {
        "application/merge-patch+json" => PatchType::Merge,
        "application/json-patch+json" => PatchType::Json,
        "application/strategic-merge-patch+json" => PatchType::Strategic,
        "application/apply-patch+yaml" => PatchType::Apply,
        other => {
            return Err(StatusError::unsupported_media_type(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
            )));
        }
    };
    let body: Value = if kind == PatchType::Apply {
        let text = std::str::from_utf8(&ctx.body).map_err(|e| StatusError::bad_request(e.to_string()))?;
        match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => serde_saphyr::from_str::<Value>(text)
                .map_err(|e| StatusError::bad_request(format!("error decoding YAML: {e}")))?,
        }
    } else {
        serde_json::from_slice(&ctx.body).map_err(|e| StatusError::bad_request(format!("error decoding patch: {e}")))?
    };
    let opts = write_opts(ctx, t);
    let force = ctx.flag("force");
    if force && kind != PatchType::Apply {
        return Err(StatusError::bad_request("force is only allowed for apply"));
    }
    let name = t.name.as_deref().unwrap_or("");
    let (existed, obj) = locked(shared, |st| {
        let existed = st.get(&t.info, ns_of(t), name).is_ok();
        Ok((existed, st.patch(&t.info, ns_of(t), name, kind, &body, force, &opts)?))
    })
    .await?;
    Ok(json_response(if existed { 200 } else { 201 }, &convert::finish_one(&t.info, obj).await?))
}

fn delete_opts(ctx: &Ctx) -> Result<DeleteOpts, StatusError> {
    let body: Value = if ctx.body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&ctx.body)
            .map_err(|e| StatusError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    let mut propagation = body
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| ctx.q("propagationPolicy").map(str::to_string));
    if propagation.is_none() {
        match body.get("orphanDependents").and_then(Value::as_bool) {
            Some(true) => propagation = Some("Orphan".into()),
            Some(false) => propagation = Some("Background".into()),
            None => {}
        }
    }
    let dry = body.get("dryRun").and_then(Value::as_array).is_some_and(|a| a.iter().any(|v| v == "All"))
        || ctx.q("dryRun") == Some("All");
    Ok(DeleteOpts {
        propagation,
        uid: body.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string),
        resource_version: body.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_string),
        dry_run: dry,
    })
}

async fn do_delete(shared: &Shared, t: &Target, ctx: &Ctx) -> HResult {
    if t.sub.is_some() {
        return Err(StatusError::method_not_allowed("delete is not allowed on a subresource"));
    }
    let opts = delete_opts(ctx)?;
    let name = t.name.as_deref().unwrap_or("");
    let deleted = lock(shared)?.delete(&t.info, ns_of(t), name, &opts)?;
    match deleted {
        Deleted::Pending(obj) => Ok(json_response(200, &convert::finish_one(&t.info, obj).await?)),
        Deleted::Gone(obj) => {
            let mut details = json!({"name": name, "kind": t.info.plural, "uid": crate::meta::uid_of(&obj)});
            if !t.info.group.is_empty() {
                details["group"] = json!(t.info.group);
            }
            Ok(json_response(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
            ))
        }
    }
}

async fn do_delete_collection(shared: &Shared, t: &Target, ctx: &Ctx) -> HResult {
    let (labels, fields) = selectors(shared, t, ctx)?;
    let opts = delete_opts(ctx)?;
    let (items, rv) = delete_all(&mut *lock(shared)?, t, &labels, &fields, &opts)?;
    let items = convert::finish(&t.info, items.into_iter().map(Arc::new).collect(), true).await?;
    let items: Vec<Value> = items.into_iter().map(Arc::unwrap_or_clone).collect();
    Ok(json_response(
        200,
        &json!({"apiVersion": t.info.api_version(), "kind": format!("{}List", t.info.kind), "metadata": {"resourceVersion": rv}, "items": items}),
    ))
}

/// Deletes every selected object; returns their last states and the resourceVersion after.
fn delete_all(
    st: &mut State,
    t: &Target,
    labels: &LabelSelector,
    fields: &FieldSelector,
    opts: &DeleteOpts,
) -> ApiResult<(Vec<Value>, String)> {
    let page = st.list(&t.info, t.ns.as_deref(), labels, fields, None, None)?;
    let mut items = Vec::new();
    for o in page.items {
        let ns = crate::meta::namespace(&o).to_string();
        let name = crate::meta::name(&o).to_string();
        match st.delete(&t.info, &ns, &name, opts) {
            Ok(Deleted::Gone(v)) | Ok(Deleted::Pending(v)) => items.push(v),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok((items, st.rv.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    type Resolved = (String, Option<String>, Option<String>, Option<String>);

    fn target(rest: &[&str], group: &str) -> Option<Resolved> {
        let reg = Registry::builtin();
        let version = "v1";
        resolve(&reg, group, version, rest).map(|t| (t.info.plural.clone(), t.ns, t.name, t.sub))
    }

    #[test]
    fn resolves_namespaced_cluster_and_subresource_paths() {
        assert_eq!(
            target(&["namespaces", "default", "configmaps", "a"], ""),
            Some(("configmaps".into(), Some("default".into()), Some("a".into()), None))
        );
        assert_eq!(target(&["configmaps"], ""), Some(("configmaps".into(), None, None, None)));
        assert_eq!(
            target(&["namespaces", "default", "deployments", "d", "status"], "apps"),
            Some(("deployments".into(), Some("default".into()), Some("d".into()), Some("status".into())))
        );
        // The namespace object itself and its status.
        assert_eq!(target(&["namespaces", "x"], ""), Some(("namespaces".into(), None, Some("x".into()), None)));
        assert_eq!(
            target(&["namespaces", "x", "status"], ""),
            Some(("namespaces".into(), None, Some("x".into()), Some("status".into())))
        );
        // A named namespaced object needs its namespace; cluster-scoped ones have none.
        assert_eq!(target(&["configmaps", "a"], ""), None);
        assert_eq!(target(&["namespaces", "default", "clusterroles"], "rbac.authorization.k8s.io"), None);
        assert_eq!(target(&["nope"], ""), None);
    }
}
