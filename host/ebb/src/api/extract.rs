//! Request bodies: JSON objects only (serde would also take a struct from an array,
//! which the API documents as an object), with messages that say what is wrong.

use super::ApiError;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// What handlers take as a body; [`object`] or [`optional_object`] reads it.
pub type Body = Result<Json<Value>, JsonRejection>;

/// A required JSON object.
pub fn object<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let Json(value) = body.map_err(super::error::json_rejection)?;
    decode(value)
}

/// An optional JSON object: no body (no JSON content type) or `null` is the default.
pub fn optional_object<T: DeserializeOwned + Default>(body: Body) -> Result<T, ApiError> {
    match body {
        Ok(Json(Value::Null)) | Err(JsonRejection::MissingJsonContentType(_)) => Ok(T::default()),
        Ok(Json(value)) => decode(value),
        Err(e) => Err(super::error::json_rejection(e)),
    }
}

fn decode<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::BadRequest(format!("the body does not fit: {e}")))
}
