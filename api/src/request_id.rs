//! `x-request-id`: every request gets one (the caller's, when it sends a
//! well-formed one, else a new ULID), answered in the same header and
//! recorded on the audit events the request causes.

use actix_web::HttpMessage;
use actix_web::HttpRequest;
use actix_web::dev::ServiceRequest;
use actix_web::http::header::{HeaderName, HeaderValue};

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Debug, Clone)]
struct RequestId(String);

fn well_formed(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Gives `req` its id and returns it, for the answer's header.
pub fn assign(req: &ServiceRequest) -> HeaderValue {
    let sent = req.headers().get(&HEADER).and_then(|v| v.to_str().ok()).filter(|v| well_formed(v));
    let id = sent.map(str::to_owned).unwrap_or_else(|| ulid::Ulid::new().to_string().to_lowercase());
    req.extensions_mut().insert(RequestId(id.clone()));
    HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The id [`assign`] gave this request.
pub fn of(req: &HttpRequest) -> Option<String> {
    req.extensions().get::<RequestId>().map(|r| r.0.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ids_are_taken_from_the_caller() {
        assert!(well_formed("01jbd3k6q3x9a7m2c5v8w0z4ty") && well_formed("portal-7.abc_1"));
        assert!(!well_formed("") && !well_formed("a b") && !well_formed("x\ny") && !well_formed(&"a".repeat(129)));
    }
}
