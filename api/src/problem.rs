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

/// Every problem the API answers: its status, its type slug
/// (`https://paddock.dev/problems/<slug>`) and its title, in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    SelfApproval,
    NotFound,
    MethodNotAllowed,
    NotConfigured,
    BadSignature,
    Exists,
    NotAwaitingApproval,
    RunFinished,
    HoldReleased,
    SecretsUnavailable,
    ExportNotReady,
    ReplayedDelivery,
    PayloadTooLarge,
    UnsupportedMediaType,
    IdempotencyKeyReused,
    Internal,
    Unavailable,
    AuditUnavailable,
    WrongTenant,
    UnownedRepository,
    TenantConflict,
    IdempotencyKeyInUse,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: &[ErrorCode] = &[
        Self::InvalidRequest,
        Self::Unauthorized,
        Self::Forbidden,
        Self::SelfApproval,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::NotConfigured,
        Self::BadSignature,
        Self::Exists,
        Self::NotAwaitingApproval,
        Self::RunFinished,
        Self::HoldReleased,
        Self::SecretsUnavailable,
        Self::ExportNotReady,
        Self::ReplayedDelivery,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::IdempotencyKeyReused,
        Self::Internal,
        Self::Unavailable,
        Self::AuditUnavailable,
        Self::WrongTenant,
        Self::UnownedRepository,
        Self::TenantConflict,
        Self::IdempotencyKeyInUse,
    ];

    /// (status, slug, title).
    fn parts(self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            Self::InvalidRequest => (S::BAD_REQUEST, "invalid-request", "The request is invalid"),
            Self::Unauthorized => (S::UNAUTHORIZED, "unauthorized", "Authentication required"),
            Self::BadSignature => (S::UNAUTHORIZED, "bad-signature", "The webhook signature is invalid"),
            Self::Forbidden => (S::FORBIDDEN, "forbidden", "Permission denied"),
            Self::SelfApproval => (S::FORBIDDEN, "self-approval", "Nobody approves their own run"),
            Self::NotFound => (S::NOT_FOUND, "not-found", "Not found"),
            Self::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed"),
            Self::NotConfigured => (S::NOT_FOUND, "not-configured", "GitHub webhooks are not configured"),
            Self::Exists => (S::CONFLICT, "exists", "The service account exists"),
            Self::NotAwaitingApproval => (S::CONFLICT, "not-awaiting-approval", "The run is not awaiting approval"),
            Self::RunFinished => (S::CONFLICT, "run-finished", "The run already finished"),
            Self::HoldReleased => (S::CONFLICT, "hold-released", "The hold is already released"),
            Self::SecretsUnavailable => (S::CONFLICT, "secrets-unavailable", "Secrets cannot be registered"),
            Self::ExportNotReady => (S::CONFLICT, "export-not-ready", "The export is not finished"),
            Self::ReplayedDelivery => (S::CONFLICT, "replayed-delivery", "This delivery was already received"),
            Self::PayloadTooLarge => (S::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload too large"),
            Self::UnsupportedMediaType => {
                (S::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type")
            }
            Self::IdempotencyKeyReused => {
                (S::UNPROCESSABLE_ENTITY, "idempotency-key-reused", "Idempotency-Key reused for a different request")
            }
            Self::Internal => (S::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
            Self::Unavailable => (S::SERVICE_UNAVAILABLE, "unavailable", "A dependency is unavailable"),
            Self::AuditUnavailable => (S::SERVICE_UNAVAILABLE, "audit-unavailable", "The audit trail is unavailable"),
            Self::WrongTenant => (S::FORBIDDEN, "wrong-tenant", "The repository belongs to another tenant"),
            Self::UnownedRepository => (S::FORBIDDEN, "unowned-repository", "No tenant owns the repository"),
            Self::TenantConflict => (S::CONFLICT, "tenant-conflict", "The tenant cannot be changed that way"),
            Self::IdempotencyKeyInUse => {
                (S::CONFLICT, "idempotency-key-in-use", "A request with this Idempotency-Key is in progress")
            }
        }
    }

    pub fn status(self) -> StatusCode {
        self.parts().0
    }

    pub fn slug(self) -> &'static str {
        self.parts().1
    }

    pub fn title(self) -> &'static str {
        self.parts().2
    }
}

impl Problem {
    pub fn new(code: ErrorCode) -> Self {
        let (status, slug, title) = code.parts();
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
        Self::new(ErrorCode::InvalidRequest).detail(detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound).detail(detail)
    }

    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal).detail("the server failed to handle the request; it has been logged")
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable).detail(detail)
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

impl From<store::QueueError> for Problem {
    fn from(e: store::QueueError) -> Self {
        tracing::error!(error = %e, "queue error");
        match e {
            store::QueueError::Redis(_) => Problem::unavailable("the run store (Redis) is unavailable"),
            store::QueueError::Corrupt { .. } => Problem::internal(),
            store::QueueError::Audit(_) => audit_unavailable(),
            backlog @ store::QueueError::AuditBacklog { .. } => {
                Problem::new(ErrorCode::AuditUnavailable).detail(backlog.to_string())
            }
            store::QueueError::Unsupported(_) => Problem::internal(),
            changed @ store::QueueError::TenancyChanged => {
                Problem::unavailable(format!("{changed}, again and again; retry in a moment"))
            }
        }
    }
}

impl From<crate::runs::service::SubmitError> for Problem {
    fn from(e: crate::runs::service::SubmitError) -> Self {
        use crate::runs::service::SubmitError;
        match e {
            SubmitError::Invalid(e) => e.into(),
            SubmitError::Store(e) => e.into(),
            reused @ SubmitError::KeyReused { .. } => {
                Problem::new(ErrorCode::IdempotencyKeyReused).detail(reused.to_string()).field("Idempotency-Key")
            }
            busy @ SubmitError::KeyInUse { .. } => {
                Problem::new(ErrorCode::IdempotencyKeyInUse).detail(busy.to_string()).field("Idempotency-Key")
            }
        }
    }
}

impl From<audit_trail::AuditError> for Problem {
    fn from(e: audit_trail::AuditError) -> Self {
        tracing::error!(error = %e, "audit trail");
        audit_unavailable()
    }
}

fn audit_unavailable() -> Problem {
    Problem::new(ErrorCode::AuditUnavailable)
        .detail("the action was refused because its audit event could not be stored durably; retry later")
}

impl From<objstore::StoreError> for Problem {
    fn from(e: objstore::StoreError) -> Self {
        tracing::error!(error = %e, "object store error");
        Problem::unavailable("object storage is unavailable")
    }
}

/// Maps actix's extractor errors (JSON body, query string, path) to problems.
pub fn json_error(err: actix_web::error::JsonPayloadError, _: &actix_web::HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as E;
    let problem = match &err {
        E::ContentType => Problem::new(ErrorCode::UnsupportedMediaType).detail("the body must be application/json"),
        E::Overflow { .. } | E::OverflowKnownLength { .. } => {
            Problem::new(ErrorCode::PayloadTooLarge).detail(err.to_string())
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

/// Unknown routes answer with a problem, not an empty 404; a known path
/// asked with a method it does not have answers 405 with `Allow`.
pub async fn not_found(req: actix_web::HttpRequest) -> HttpResponse {
    let (method, path) = (req.method(), req.path());
    if let Some(methods) = crate::openapi::allowed_methods(path) {
        let detail = format!("{path} answers {}, not {method}", methods.join(", "));
        let mut response = Problem::new(ErrorCode::MethodNotAllowed).detail(detail).error_response();
        if let Ok(allow) = HeaderValue::from_str(&methods.join(", ")) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        return response;
    }
    Problem::not_found(format!("no route for {method} {path}")).error_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_has_its_own_slug_and_a_client_or_server_error_status() {
        let mut slugs: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.slug()).collect();
        slugs.sort_unstable();
        let count = slugs.len();
        slugs.dedup();
        assert_eq!(slugs.len(), count, "two codes share a slug");
        for code in ErrorCode::ALL {
            assert!(code.status().is_client_error() || code.status().is_server_error(), "{code:?}");
            assert!(code.slug().chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{code:?}");
            let problem = Problem::new(*code);
            assert_eq!(problem.kind, format!("https://paddock.dev/problems/{}", code.slug()));
            assert_eq!((problem.status, problem.title.as_str()), (code.status().as_u16(), code.title()));
        }
    }
}
