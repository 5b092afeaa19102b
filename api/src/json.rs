//! The JSON body extractor every handler uses. On top of actix's (size
//! limit, `application/json`, problem+json errors) it takes only a JSON
//! object at the top level, as the document says (serde would otherwise
//! read an array positionally into a struct), and reads a whole-number
//! float (`30.0`) as the integer it is, as JSON Schema does.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::problem::Problem;

/// A request body of type `T`.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = web::Json::<Value>::from_request(req, payload);
        Box::pin(async move { Ok(Json(parse(body.await?.into_inner())?)) })
    }
}

/// `value` as a `T`, if it is an object that reads as one.
fn parse<T: DeserializeOwned>(mut value: Value) -> Result<T, Problem> {
    if !value.is_object() {
        return Err(Problem::bad_request("the body must be a JSON object"));
    }
    whole_numbers_as_integers(&mut value);
    serde_json::from_value(value).map_err(|e| Problem::bad_request(format!("invalid JSON body: {e}")))
}

/// Rewrites every float with no fractional part, in range, as an integer.
fn whole_numbers_as_integers(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f >= 0.0 && f < u64::MAX as f64 {
                *value = Value::from(f as u64);
            } else if f.fract() == 0.0 && f < 0.0 && f >= i64::MIN as f64 {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(whole_numbers_as_integers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Limits {
        max_running: Option<u32>,
        weight: Option<f64>,
    }

    #[test]
    fn only_an_object_is_a_body_and_whole_floats_are_integers() {
        let limits: Limits = parse(json!({"max_running": 4.0, "weight": 2.0})).expect("an object");
        assert_eq!(limits, Limits { max_running: Some(4), weight: Some(2.0) });
        let weight: Limits = parse(json!({"weight": 0.5})).expect("a fraction stays a float");
        assert_eq!(weight.weight, Some(0.5));
        for refused in [json!([4, 2.0]), json!("x"), json!(null), json!({"max_running": 4.5})] {
            assert!(parse::<Limits>(refused.clone()).is_err(), "{refused} was accepted");
        }
        let unknown = parse::<Limits>(json!({"colour": "blue"})).expect_err("unknown field");
        assert!(unknown.detail.unwrap_or_default().contains("colour"));
    }
}
