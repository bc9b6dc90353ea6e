//! `POST /v2/models/{name}/feedback`: ground-truth labels by request id, one or a batch.
//!
//! `{"id": "…", "truth": 1}` or `{"feedback": [{"id": "…", "truth": 1}, …]}`; truth is a class label
//! or a number, or an array of them (one per row of the request). Every valid label is appended to
//! the outcome log (so an offline join sees it) and joined live. The whole body is checked before
//! anything is taken: a bad item refuses the request (400, naming the item) and nothing of it is kept.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::openapi::{
    BadRequest, Conflict, Denied, FeedbackRequest, FeedbackResponse, Gone, ModelPath, NotFound, PayloadTooLarge,
    Unavailable,
};
use crate::compare::Truth;
use crate::error::{Error, ErrorKind};
use crate::inference::{Gateway, MAX_REQUEST_ID, acceptable_id};
use crate::join::Joined;
use crate::outcomes::FeedbackRecord;

/// Labels in one request, at most.
pub const MAX_BATCH: usize = 10_000;

/// Ground truth by request id, one label or a batch: joined with the paired records, and logged.
#[utoipa::path(post, path = "/v2/models/{name}/feedback", tag = "feedback", security(("bearer" = ["labels"])), params(ModelPath),
    request_body = FeedbackRequest,
    responses(
        (status = 200, description = "Joined (one label), or the batch's results", body = FeedbackResponse),
        (status = 202, description = "Held until its record arrives", body = FeedbackResponse),
        BadRequest, NotFound, Conflict, Gone, PayloadTooLarge, Denied, Unavailable))]
pub async fn feedback(
    State(gateway): State<Arc<Gateway>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let deployment = crate::inference::served(&gateway, &name)?.deployment();
    let task = &deployment.champion().manifest().task;
    let body = body.map_err(|rejection| super::v2::body_error(&rejection, gateway.config().max_request_bytes))?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| Error::invalid_input(format!("the feedback body is not valid JSON: {e}")))?;
    let (items, batch) = match value {
        Value::Object(mut object) if object.contains_key("feedback") => match object.remove("feedback") {
            Some(Value::Array(items)) => (items, true),
            _ => return Err(Error::invalid_input("`feedback` must be an array of {\"id\", \"truth\"} objects")),
        },
        one => (vec![one], false),
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(Error::invalid_input(format!("send between 1 and {MAX_BATCH} labels, not {}", items.len())));
    }
    // Everything is checked before anything is kept.
    let (mut ids, mut raws, mut truths) = (Vec::new(), Vec::new(), Vec::new());
    for (i, item) in items.into_iter().enumerate() {
        let at = |message: String| if batch { format!("feedback[{i}]: {message}") } else { message };
        let Value::Object(mut object) = item else {
            return Err(Error::invalid_input(at("expected {\"id\", \"truth\"}".into())));
        };
        if let Some(key) = object.keys().find(|k| !matches!(k.as_str(), "id" | "truth")) {
            return Err(Error::invalid_input(at(format!("unknown field `{key}`; expected `id` and `truth`"))));
        }
        let id = match object.remove("id") {
            Some(Value::String(id)) if acceptable_id(&id) => id,
            Some(_) => {
                return Err(Error::invalid_input(at(format!("`id` must be a string of 1 to {MAX_REQUEST_ID} bytes"))));
            }
            None => return Err(Error::invalid_input(at("`id` is missing".into()))),
        };
        let raw = object.remove("truth").ok_or_else(|| Error::invalid_input(at("`truth` is missing".into())))?;
        truths.push(Truth::parse(&raw, task).map_err(|e| Error::invalid_input(at(e)))?);
        ids.push(id);
        raws.push(raw);
    }
    let now = SystemTime::now();
    let labels = ids.iter().zip(&raws).zip(truths).map(|((id, raw), truth)| {
        let label = FeedbackRecord { kind: "feedback", request_id: id, timestamp: now, model: &name, truth: raw };
        (id.clone(), truth, label.to_json_line())
    });
    // The join logs each label's line as it takes it (or, busy, logs them unjoined).
    let answers = gateway
        .join()
        .truths(&name, labels.collect())
        .await
        .map_err(|_| Error::new(ErrorKind::Overloaded, "the feedback join is behind; retry shortly"))?;
    if !batch {
        let id = &ids[0];
        return match answers.first().copied().unwrap_or(Joined::Held) {
            Joined::Joined => Ok((StatusCode::OK, Json(json!({ "id": id, "status": "joined" }))).into_response()),
            Joined::Held => Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "status": "held" }))).into_response()),
            Joined::Duplicate => Err(Error::new(
                ErrorKind::Conflict,
                format!("request '{id}' already has a label; the first one stands"),
            )),
            Joined::Expired => Err(Error::new(
                ErrorKind::Gone,
                format!(
                    "the record of request '{id}' is older than the join keeps; the label is in the outcome log for offline reports"
                ),
            )),
        };
    }
    let count = |kind: Joined| answers.iter().filter(|a| **a == kind).count();
    let results: Vec<Value> =
        ids.iter().zip(&answers).map(|(id, answer)| json!({ "id": id, "status": answer.label() })).collect();
    Ok(Json(json!({
        "joined": count(Joined::Joined),
        "held": count(Joined::Held),
        "duplicate": count(Joined::Duplicate),
        "expired": count(Joined::Expired),
        "results": results,
    }))
    .into_response())
}
