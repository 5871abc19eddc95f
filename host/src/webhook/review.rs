//! Answers one `ConversionReview`: each object is converted by the plugin that serves its kind,
//! in the sandbox, off the async runtime. Any failure answers `Failed` naming the plugin and the
//! reason; nothing here can take the host down.

use kube::core::Status;
use kube::core::conversion::{ConversionRequest, ConversionResponse, ConversionReview};
use serde_json::Value;
use tracing::Instrument;

use super::Converters;

/// The answer to a raw `ConversionReview` body, as the response body.
pub async fn answer(converters: &Converters, body: &[u8]) -> Value {
    let request = serde_json::from_slice::<ConversionReview>(body)
        .map_err(|e| format!("the body is not a ConversionReview: {e}"))
        .and_then(|review| ConversionRequest::from_review(review).map_err(|_| "the review has no request".to_string()));
    let response = match request {
        Ok(request) => convert_all(converters, request).await,
        Err(message) => ConversionResponse::invalid(Status::failure(&message, "BadRequest")),
    };
    converters.counted(response.result.status != Some(kube::core::response::StatusSummary::Success));
    serde_json::to_value(response.into_review()).unwrap_or_default()
}

async fn convert_all(converters: &Converters, request: ConversionRequest) -> ConversionResponse {
    let to = request.desired_api_version.clone();
    tracing::Span::current().record("objects", request.objects.len()).record("to", to.as_str());
    let objects = request.objects.clone();
    let response = ConversionResponse::for_request(request);
    let Some((_, to_version)) = to.split_once('/') else {
        let message = format!("desiredAPIVersion {to:?} has no group; wasmop converts custom resources only");
        return response.failure(Status::failure(&message, "BadRequest"));
    };
    let mut converted = Vec::with_capacity(objects.len());
    for obj in objects {
        match convert_one(converters, obj, to_version).await {
            Ok(obj) => converted.push(obj),
            Err(message) => {
                tracing::warn!(desired = %to, %message, "conversion failed");
                return response.failure(Status::failure(&message, "ConversionFailed"));
            }
        }
    }
    response.success(converted)
}

async fn convert_one(converters: &Converters, obj: Value, to_version: &str) -> Result<Value, String> {
    let group = obj["apiVersion"].as_str().and_then(|v| v.split_once('/')).map_or("", |(g, _)| g).to_string();
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let plugin = converters
        .get(&group, &kind)
        .ok_or_else(|| format!("no plugin loaded in this wasmop converts {group} {kind}"))?;
    let to_version = to_version.to_string();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let span = tracing::info_span!("convert", plugin = %plugin.metadata().name, %kind, %name, to = %to_version);
    tokio::task::spawn_blocking(move || plugin.convert(&obj, &to_version).map_err(|e| e.to_string()))
        .instrument(span)
        .await
        .map_err(|e| format!("the conversion task failed: {e}"))?
}
