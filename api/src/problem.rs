//! RFC 9457 problem details: the one error shape of the API, used for
//! handler errors, extractor failures and unknown routes alike.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// A problem detail (RFC 9457).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &str) -> Self {
        Self {
            kind: format!("https://paddock.dev/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
            field: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-request", "The request is invalid").detail(detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found").detail(detail)
    }

    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")
            .detail("the server failed to handle the request; it has been logged")
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "A dependency is unavailable").detail(detail)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.title)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE)));
        if self.status == 401 {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"paddock\"")));
        }
        response.body(serde_json::to_string(self).unwrap_or_default())
    }
}

impl From<common::ValidationError> for Problem {
    fn from(e: common::ValidationError) -> Self {
        Problem::bad_request(e.to_string()).field(e.field)
    }
}

impl From<worker::queue::QueueError> for Problem {
    fn from(e: worker::queue::QueueError) -> Self {
        tracing::error!(error = %e, "queue error");
        match e {
            worker::queue::QueueError::Redis(_) => Problem::unavailable("the run store (Redis) is unavailable"),
            worker::queue::QueueError::Corrupt { .. } => Problem::internal(),
            worker::queue::QueueError::Audit(e) => e.into(),
        }
    }
}

impl From<crate::runs::service::SubmitError> for Problem {
    fn from(e: crate::runs::service::SubmitError) -> Self {
        use crate::runs::service::SubmitError;
        match e {
            SubmitError::Invalid(e) => e.into(),
            SubmitError::Store(e) => e.into(),
            reused @ SubmitError::KeyReused { .. } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused for a different request",
            )
            .detail(reused.to_string())
            .field("Idempotency-Key"),
        }
    }
}

impl From<worker::audit::AuditError> for Problem {
    fn from(e: worker::audit::AuditError) -> Self {
        tracing::error!(error = %e, "audit trail");
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "audit-unavailable", "The audit trail is unavailable")
            .detail("the action was refused because its audit event could not be stored durably; retry later")
    }
}

impl From<worker::artifacts::StoreError> for Problem {
    fn from(e: worker::artifacts::StoreError) -> Self {
        tracing::error!(error = %e, "object store error");
        Problem::unavailable("object storage is unavailable")
    }
}

/// Maps actix's extractor errors (JSON body, query string, path) to problems.
pub fn json_error(err: actix_web::error::JsonPayloadError, _: &actix_web::HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as E;
    let problem = match &err {
        E::ContentType => {
            Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type")
                .detail("the body must be application/json")
        }
        E::Overflow { .. } | E::OverflowKnownLength { .. } => {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload too large")
                .detail(err.to_string())
        }
        E::Deserialize(e) => Problem::bad_request(format!("invalid JSON body: {e}")),
        _ => Problem::bad_request(format!("unreadable body: {err}")),
    };
    problem.into()
}

pub fn query_error(err: actix_web::error::QueryPayloadError, _: &actix_web::HttpRequest) -> actix_web::Error {
    Problem::bad_request(format!("invalid query string: {err}")).into()
}

pub fn path_error(err: actix_web::error::PathError, _: &actix_web::HttpRequest) -> actix_web::Error {
    Problem::bad_request(format!("invalid path: {err}")).into()
}

/// Unknown routes answer with a problem, not an empty 404.
pub async fn not_found(req: actix_web::HttpRequest) -> HttpResponse {
    Problem::not_found(format!("no route for {} {}", req.method(), req.path())).error_response()
}
