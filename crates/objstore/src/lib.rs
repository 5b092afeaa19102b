//! Object storage for run evidence (logs, diff, summary), behind one trait so
//! the api and worker share it. The only implementation is S3 via aws-sdk-s3,
//! tested against a real S3-compatible server (Garage).

use std::future::Future;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use common::config::S3Config;

mod dir;
pub use dir::DirStore;
use secrecy::ExposeSecret;

#[derive(Debug, thiserror::Error)]
#[error("object storage: {0}")]
pub struct StoreError(String);

impl StoreError {
    pub fn new(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }

    fn from_sdk<E: std::error::Error + 'static, R: std::fmt::Debug>(e: SdkError<E, R>) -> Self {
        Self(DisplayErrorContext(e).to_string())
    }
}

/// Where run artifacts are kept.
pub trait ObjectStore: Send + Sync {
    fn put(&self, key: &str, body: Bytes, content_type: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// `None` when the key does not exist.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Bytes>, StoreError>> + Send;
    /// Succeeds when the bucket is reachable with our credentials.
    fn check(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every key under `prefix`, with its last-modified time (ms since the
    /// epoch), in key order.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<(String, u64)>, StoreError>> + Send;
    /// Removes `key` (no error when it is already gone).
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A store that can also keep an object write-once until a time (S3
/// Object Lock), as the audit trail asks when the bucket enforces it.
pub trait RetainingStore: ObjectStore {
    fn put_retained(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        mode: &str,
        retain_until_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl RetainingStore for S3Store {
    /// The bucket must have Object Lock enabled; `mode` is `GOVERNANCE` or
    /// `COMPLIANCE`.
    async fn put_retained(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        mode: &str,
        retain_until_ms: u64,
    ) -> Result<(), StoreError> {
        let until = aws_sdk_s3::primitives::DateTime::from_millis(retain_until_ms as i64);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .object_lock_mode(mode.into())
            .object_lock_retain_until_date(until)
            .send()
            .await
            .map_err(StoreError::from_sdk)?;
        Ok(())
    }
}

#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
}

/// Whether the bucket enforces write-once retention (S3 Object Lock).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ObjectLockStatus {
    /// Objects cannot be deleted or overwritten before their retention ends:
    /// the bucket has Object Lock and either a default retention or Paddock
    /// writes each audit object with one (`audit.object_lock_mode`).
    pub enforced: bool,
    /// The bucket has Object Lock enabled.
    #[serde(default)]
    pub enabled: bool,
    /// The retention Paddock writes on each audit object, when it does.
    #[serde(default)]
    pub audit_object_mode: Option<String>,
    #[serde(default)]
    pub audit_object_days: Option<u32>,
    /// The bucket's default retention mode (`GOVERNANCE`, `COMPLIANCE`).
    pub mode: Option<String>,
    pub default_retention_days: Option<i32>,
    /// What the store answered.
    pub detail: String,
}

impl S3Store {
    /// Asks the bucket for its Object Lock configuration. Stores without
    /// Object Lock (Garage, for one) answer with an error: not enforced.
    pub async fn object_lock(&self) -> ObjectLockStatus {
        match self.client.get_object_lock_configuration().bucket(&self.bucket).send().await {
            Ok(out) => {
                let config = out.object_lock_configuration();
                let enabled = config.and_then(|c| c.object_lock_enabled()).is_some_and(|e| e.as_str() == "Enabled");
                let retention = config.and_then(|c| c.rule()).and_then(|r| r.default_retention());
                let mode = retention.and_then(|r| r.mode()).map(|m| m.as_str().to_owned());
                let days = retention.and_then(|r| r.days().or(r.years().map(|y| y * 365)));
                let enforced = enabled && mode.is_some();
                let detail = if enforced {
                    "Object Lock is enabled with a default retention".to_owned()
                } else if enabled {
                    "Object Lock is enabled but the bucket has no default retention".to_owned()
                } else {
                    "Object Lock is not enabled on the bucket".to_owned()
                };
                ObjectLockStatus {
                    enforced,
                    enabled,
                    audit_object_mode: None,
                    audit_object_days: None,
                    mode,
                    default_retention_days: days,
                    detail,
                }
            }
            Err(e) => ObjectLockStatus {
                enforced: false,
                enabled: false,
                audit_object_mode: None,
                audit_object_days: None,
                mode: None,
                default_retention_days: None,
                detail: match e.as_service_error().map(|s| s.meta()) {
                    Some(meta) => format!(
                        "the store does not report Object Lock ({}: {})",
                        meta.code().unwrap_or("error"),
                        meta.message().unwrap_or("no message")
                    ),
                    None => format!("the store does not report Object Lock: {}", StoreError::from_sdk(e)),
                },
            },
        }
    }

    /// Stores `body` with user metadata (`x-amz-meta-<name>`), e.g. the
    /// tenant and retention class of a run object.
    pub async fn put_with_metadata(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        metadata: &[(&str, &str)],
    ) -> Result<(), StoreError> {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body));
        for (name, value) in metadata {
            request = request.metadata(*name, *value);
        }
        request.send().await.map_err(StoreError::from_sdk)?;
        Ok(())
    }

    /// Makes the bucket's lifecycle configuration expire everything under
    /// `prefix` after `days` with a rule named `id`, keeping every other rule
    /// (the operator's own) as it is.
    pub async fn ensure_expiration_rule(&self, id: &str, prefix: &str, days: u32) -> Result<(), StoreError> {
        use aws_sdk_s3::types::{
            BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
        };
        let mut rules = match self.client.get_bucket_lifecycle_configuration().bucket(&self.bucket).send().await {
            Ok(out) => out.rules().to_vec(),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Vec::new(),
            Err(e) => return Err(StoreError::from_sdk(e)),
        };
        rules.retain(|r| r.id() != Some(id));
        let rule = LifecycleRule::builder()
            .id(id)
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().prefix(prefix).build())
            .expiration(LifecycleExpiration::builder().days(days as i32).build())
            .build()
            .map_err(StoreError::new)?;
        rules.push(rule);
        let config = BucketLifecycleConfiguration::builder().set_rules(Some(rules)).build().map_err(StoreError::new)?;
        self.client
            .put_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .lifecycle_configuration(config)
            .send()
            .await
            .map_err(StoreError::from_sdk)?;
        Ok(())
    }

    /// The expiration in days of the lifecycle rule named `id`, if the
    /// bucket has one.
    pub async fn expiration_rule(&self, id: &str) -> Result<Option<i32>, StoreError> {
        match self.client.get_bucket_lifecycle_configuration().bucket(&self.bucket).send().await {
            Ok(out) => Ok(out.rules().iter().find(|r| r.id() == Some(id)).and_then(|r| r.expiration()?.days())),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
            Err(e) => Err(StoreError::from_sdk(e)),
        }
    }

    /// One user-metadata value of `key`; `None` when the object or the value
    /// is absent.
    pub async fn metadata(&self, key: &str, name: &str) -> Result<Option<String>, StoreError> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => Ok(out.metadata().and_then(|m| m.get(name)).cloned()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(StoreError::from_sdk(e)),
        }
    }

    /// With `access_key_id` and `secret_access_key` set, signs with them;
    /// without, with the AWS chain (the instance, task or pod role: see
    /// [`platform::aws_credentials`]), renewed before the keys expire.
    pub fn new(config: &S3Config, outbound: &platform::outbound::Outbound) -> Self {
        let builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .force_path_style(config.force_path_style)
            .http_client(http_client(outbound));
        let mut builder = if config.access_key_id.is_empty() {
            let http = outbound.http().build().unwrap_or_default();
            builder.credentials_provider(Chain { http, region: config.region.clone() })
        } else {
            builder.credentials_provider(Credentials::new(
                &config.access_key_id,
                config.secret_access_key.expose_secret(),
                None,
                None,
                "paddock-config",
            ))
        };
        if !config.endpoint.is_empty() {
            builder = builder.endpoint_url(&config.endpoint);
        }
        Self { client: aws_sdk_s3::Client::from_conf(builder.build()), bucket: config.bucket.clone() }
    }
}

/// The AWS credential chain, for the SDK (which caches what it returns
/// until shortly before it expires).
#[derive(Debug)]
struct Chain {
    http: reqwest::Client,
    region: String,
}

impl aws_credential_types::provider::ProvideCredentials for Chain {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(async move {
            let aws = common::config::AwsCredentialsConfig::default();
            match platform::aws_credentials::keys(&aws, &self.region, &self.http).await {
                Ok(keys) => Ok(keys.credentials()),
                Err(message) => Err(aws_credential_types::provider::error::CredentialsError::not_loaded(message)),
            }
        })
    }
}

/// The SDK's HTTP client with the process's trust: the operating system's
/// store plus `tls.extra_ca_files`. The store is a service inside the
/// network: the outbound proxy is not used for it.
fn http_client(outbound: &platform::outbound::Outbound) -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
    let trust = outbound.extra_cas_pem().into_iter().fold(TrustStore::default(), TrustStore::with_pem_certificate);
    let builder = aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc));
    match TlsContext::builder().with_trust_store(trust).build() {
        Ok(context) => builder.tls_context(context).build_https(),
        // The certificates were checked when the Outbound was built; the
        // system store alone is the only other outcome and still verifies.
        Err(_) => builder.build_https(),
    }
}

impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), StoreError> {
        self.put_with_metadata(key, body, content_type, &[]).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let output = match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(output) => output,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(StoreError::from_sdk(e)),
        };
        let data = output.body.collect().await.map_err(|e| StoreError(e.to_string()))?;
        Ok(Some(data.into_bytes()))
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.client.head_bucket().bucket(&self.bucket).send().await.map_err(StoreError::from_sdk)?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut keys = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(StoreError::from_sdk)?;
            for object in page.contents() {
                let modified = object.last_modified().and_then(|t| t.to_millis().ok()).unwrap_or_default();
                if let Some(key) = object.key() {
                    keys.push((key.to_owned(), modified.max(0) as u64));
                }
            }
        }
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client.delete_object().bucket(&self.bucket).key(key).send().await.map_err(StoreError::from_sdk)?;
        Ok(())
    }
}
