//! Who may do what: separate permissions, roles that bundle them, and
//! bindings of roles to users, groups or service accounts at a scope
//! (everywhere, one tenant, one repository). Deny by default: a caller holds
//! only the permissions its bindings grant, where they grant them. `admin`
//! manages Paddock; it does not read logs, approve tools or read audit.
//! Service accounts never approve.

use std::fmt;
use std::str::FromStr;

use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ValidationError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Permission {
    /// Request an agent run.
    #[serde(rename = "runs.create")]
    RunsCreate,
    /// Approve privileged tools on someone else's run.
    #[serde(rename = "tools.approve")]
    ToolsApprove,
    /// View runs' logs and transcripts.
    #[serde(rename = "logs.read")]
    LogsRead,
    /// Configure model providers, their policy and redaction secrets.
    #[serde(rename = "providers.configure")]
    ProvidersConfigure,
    /// Set scheduling limits and sandbox policies.
    #[serde(rename = "limits.manage")]
    LimitsManage,
    /// Bind roles, manage service accounts.
    #[serde(rename = "rbac.manage")]
    RbacManage,
    /// Read and export the audit trail.
    #[serde(rename = "audit.read")]
    AuditRead,
    /// Revoke tokens and credentials at once.
    #[serde(rename = "security.revoke")]
    SecurityRevoke,
    /// Place and release legal holds on a run's or tenant's evidence.
    #[serde(rename = "audit.hold")]
    AuditHold,
    /// Declare tenants and the repositories they own.
    #[serde(rename = "tenants.manage")]
    TenantsManage,
}

impl Permission {
    pub const ALL: [Permission; 10] = [
        Permission::RunsCreate,
        Permission::ToolsApprove,
        Permission::LogsRead,
        Permission::ProvidersConfigure,
        Permission::LimitsManage,
        Permission::RbacManage,
        Permission::AuditRead,
        Permission::SecurityRevoke,
        Permission::AuditHold,
        Permission::TenantsManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::RunsCreate => "runs.create",
            Permission::ToolsApprove => "tools.approve",
            Permission::LogsRead => "logs.read",
            Permission::ProvidersConfigure => "providers.configure",
            Permission::LimitsManage => "limits.manage",
            Permission::RbacManage => "rbac.manage",
            Permission::AuditRead => "audit.read",
            Permission::SecurityRevoke => "security.revoke",
            Permission::AuditHold => "audit.hold",
            Permission::TenantsManage => "tenants.manage",
        }
    }
}

/// A bundle of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Requester,
    Approver,
    LogViewer,
    ProviderAdmin,
    Auditor,
    Admin,
    /// Revokes credentials in an incident, without administering anything.
    SecurityResponder,
    /// Reads the audit trail and places legal holds (legal, compliance).
    ComplianceOfficer,
}

impl Role {
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::Requester => &[RunsCreate],
            Role::Approver => &[ToolsApprove],
            Role::LogViewer => &[LogsRead],
            Role::ProviderAdmin => &[ProvidersConfigure],
            Role::Auditor => &[AuditRead],
            Role::Admin => &[ProvidersConfigure, LimitsManage, RbacManage, SecurityRevoke, TenantsManage],
            Role::SecurityResponder => &[SecurityRevoke],
            Role::ComplianceOfficer => &[AuditRead, AuditHold],
        }
    }
}

impl FromStr for Permission {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ValidationError::new("permission", format!("`{s}` is not a permission")))
    }
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Requester,
        Role::Approver,
        Role::LogViewer,
        Role::ProviderAdmin,
        Role::Auditor,
        Role::Admin,
        Role::SecurityResponder,
        Role::ComplianceOfficer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Requester => "requester",
            Role::Approver => "approver",
            Role::LogViewer => "log-viewer",
            Role::ProviderAdmin => "provider-admin",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::SecurityResponder => "security-responder",
            Role::ComplianceOfficer => "compliance-officer",
        }
    }
}

/// Where a binding applies: everywhere, one tenant, or one repository
/// (`owner/name`, whichever tenant the run belongs to). Written `global`,
/// `tenant:<name>`, `repo:<owner>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Global,
    Tenant(String),
    Repository(String),
}

impl Scope {
    /// Whether this scope includes something of `tenant` in `repository`.
    /// `None` stands for "not about one": only global scope covers it.
    pub fn covers(&self, tenant: Option<&str>, repository: Option<&str>) -> bool {
        match self {
            Scope::Global => true,
            Scope::Tenant(t) => tenant == Some(t.as_str()),
            Scope::Repository(r) => repository.is_some_and(|repo| repo.eq_ignore_ascii_case(r)),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Tenant(t) => write!(f, "tenant:{t}"),
            Scope::Repository(r) => write!(f, "repo:{r}"),
        }
    }
}

impl FromStr for Scope {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| ValidationError::new("scope", format!("`{s}` {why}"));
        if s == "global" {
            return Ok(Scope::Global);
        }
        if let Some(tenant) = s.strip_prefix("tenant:") {
            crate::validate_tenant(tenant).map_err(|_| bad("names no valid tenant"))?;
            return Ok(Scope::Tenant(tenant.to_owned()));
        }
        if let Some(repo) = s.strip_prefix("repo:") {
            let name: crate::RepoName = repo.parse().map_err(|_| bad("names no valid `owner/name` repository"))?;
            return Ok(Scope::Repository(name.to_string()));
        }
        Err(bad("must be `global`, `tenant:<name>` or `repo:<owner>/<name>`"))
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(|e: ValidationError| serde::de::Error::custom(e.message))
    }
}

impl utoipa::PartialSchema for Scope {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("`global`, `tenant:<name>` or `repo:<owner>/<name>`"))
            .examples([serde_json::json!("repo:acme/widgets")])
            .into()
    }
}

impl utoipa::ToSchema for Scope {}

/// Who a binding is for: a person (as the identity provider names them), a
/// group from the identity provider, or a service account. Written
/// `user:<name>`, `group:<name>`, `service-account:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    User(String),
    Group(String),
    ServiceAccount(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::User(u) => write!(f, "user:{u}"),
            Subject::Group(g) => write!(f, "group:{g}"),
            Subject::ServiceAccount(s) => write!(f, "service-account:{s}"),
        }
    }
}

impl FromStr for Subject {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, name) = s.split_once(':').unwrap_or(("", ""));
        let printable = !name.is_empty() && name.len() <= 256 && name.chars().all(|c| c.is_ascii_graphic());
        if !printable {
            return Err(ValidationError::new(
                "subject",
                format!("`{s}` must be `<kind>:<name>` with a printable name"),
            ));
        }
        match kind {
            "user" => Ok(Subject::User(name.to_owned())),
            "group" => Ok(Subject::Group(name.to_owned())),
            "service-account" => {
                validate_account_name(name)?;
                Ok(Subject::ServiceAccount(name.to_owned()))
            }
            _ => Err(ValidationError::new(
                "subject",
                format!("`{s}`: the kind must be `user`, `group` or `service-account`"),
            )),
        }
    }
}

impl Serialize for Subject {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(|e: ValidationError| serde::de::Error::custom(e.message))
    }
}

impl utoipa::PartialSchema for Subject {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("`user:<name>`, `group:<name>` or `service-account:<name>`"))
            .examples([serde_json::json!("group:platform-team")])
            .into()
    }
}

impl utoipa::ToSchema for Subject {}

/// A service account's name: 1-64 of lowercase letters, digits, `-`.
pub fn validate_account_name(name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new("name", "a service account name is 1-64 lowercase letters, digits and `-`"))
    }
}

/// A role granted to a subject at a scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Binding {
    #[schema(example = "01jbd3k6q3x9a7m2c5v8w0z4ty")]
    pub id: String,
    pub subject: Subject,
    pub role: Role,
    pub scope: Scope,
    #[schema(example = "alice@example.com")]
    pub created_by: String,
    pub created_at_ms: u64,
}

/// One permission held at one scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grant {
    pub permission: Permission,
    pub scope: Scope,
}

/// What a caller holds: the union of its bindings' grants (additive).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(std::collections::BTreeSet<Grant>);

impl Grants {
    pub fn everything() -> Self {
        Self(Permission::ALL.into_iter().map(|permission| Grant { permission, scope: Scope::Global }).collect())
    }

    pub fn add_role(&mut self, role: Role, scope: &Scope) {
        for &permission in role.permissions() {
            self.0.insert(Grant { permission, scope: scope.clone() });
        }
    }

    /// Keeps only the permissions in `allowed` (a token's scopes).
    pub fn retain(&mut self, allowed: impl Fn(Permission) -> bool) {
        self.0.retain(|g| allowed(g.permission));
    }

    /// Whether `permission` is held anywhere at all.
    pub fn holds_somewhere(&self, permission: Permission) -> bool {
        self.0.iter().any(|g| g.permission == permission)
    }

    /// Whether `permission` is held at a scope that covers the object.
    pub fn allows(&self, permission: Permission, tenant: Option<&str>, repository: Option<&str>) -> bool {
        self.0.iter().any(|g| g.permission == permission && g.scope.covers(tenant, repository))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Grant> {
        self.0.iter()
    }
}

/// Service-account tokens: `pdk_sa_`, 40 random base62 characters (238
/// bits), then 6 base62 characters of the CRC32 of what precedes them, so a
/// secret scanner (or this API, before any lookup) can tell a real token from
/// a typo. Only the SHA-256 of a token is stored.
pub const SERVICE_TOKEN_PREFIX: &str = "pdk_sa_";
const TOKEN_RANDOM_CHARS: usize = 40;
const TOKEN_CHECKSUM_CHARS: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn base62_checksum(body: &str) -> String {
    let mut n = crc32fast::hash(body.as_bytes()) as u64;
    let mut out = [b'0'; TOKEN_CHECKSUM_CHARS];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A new service-account token.
pub fn new_service_token() -> String {
    let mut body = String::from(SERVICE_TOKEN_PREFIX);
    while body.len() < SERVICE_TOKEN_PREFIX.len() + TOKEN_RANDOM_CHARS {
        // Rejection sampling keeps every character equally likely.
        let byte = (OsRng.next_u32() & 0xff) as u8;
        if byte < 248 {
            body.push(BASE62[(byte % 62) as usize] as char);
        }
    }
    let checksum = base62_checksum(&body);
    body + &checksum
}

/// Whether `token` has the shape and checksum of a service-account token.
pub fn is_service_token(token: &str) -> bool {
    let expected = SERVICE_TOKEN_PREFIX.len() + TOKEN_RANDOM_CHARS + TOKEN_CHECKSUM_CHARS;
    if token.len() != expected || !token.starts_with(SERVICE_TOKEN_PREFIX) || !token.is_ascii() {
        return false;
    }
    let (body, checksum) = token.split_at(expected - TOKEN_CHECKSUM_CHARS);
    body[SERVICE_TOKEN_PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric()) && base62_checksum(body) == checksum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_does_not_imply_logs_tools_or_audit() {
        let admin = Role::Admin.permissions();
        for separate in [Permission::LogsRead, Permission::ToolsApprove, Permission::AuditRead] {
            assert!(!admin.contains(&separate), "{separate:?}");
        }
        let names: Vec<String> = Permission::ALL.iter().map(|p| serde_json::to_string(p).unwrap()).collect();
        assert_eq!(names[0], "\"runs.create\"");
        assert!(Permission::ALL.iter().all(|p| serde_json::to_string(p).unwrap() == format!("\"{}\"", p.as_str())));
        assert!(Role::ALL.iter().all(|r| serde_json::to_string(r).unwrap() == format!("\"{}\"", r.as_str())));
    }

    #[test]
    fn scopes_cover_their_tenant_or_repository_only() {
        let repo: Scope = "repo:Acme/Widgets".parse().unwrap();
        assert!(repo.covers(Some("any"), Some("acme/widgets")));
        assert!(!repo.covers(Some("any"), Some("acme/gadgets")));
        assert!(!repo.covers(Some("any"), None));
        let tenant: Scope = "tenant:payments".parse().unwrap();
        assert!(tenant.covers(Some("payments"), Some("x/y")));
        assert!(!tenant.covers(Some("search"), Some("x/y")));
        assert!(Scope::Global.covers(None, None));
        for bad in ["", "tenant:", "repo:nope", "org:acme", "global "] {
            assert_eq!(bad.parse::<Scope>().unwrap_err().field, "scope", "{bad}");
        }
        assert_eq!(serde_json::to_string(&tenant).unwrap(), "\"tenant:payments\"");
    }

    #[test]
    fn subjects_round_trip_and_bad_ones_name_the_field() {
        for s in ["user:alice@example.com", "group:platform", "service-account:portal"] {
            assert_eq!(s.parse::<Subject>().unwrap().to_string(), s);
        }
        for bad in ["alice", "robot:x", "user:", "service-account:Has Space"] {
            assert!(bad.parse::<Subject>().is_err(), "{bad}");
        }
    }

    #[test]
    fn service_tokens_carry_a_checksum() {
        let token = new_service_token();
        assert!(token.starts_with("pdk_sa_") && token.len() == 53, "{token}");
        assert!(is_service_token(&token));
        assert_ne!(token, new_service_token());
        // One changed character breaks the checksum.
        let mut chars: Vec<char> = token.chars().collect();
        chars[10] = if chars[10] == 'a' { 'b' } else { 'a' };
        assert!(!is_service_token(&chars.into_iter().collect::<String>()));
        assert!(!is_service_token("pdk_sa_short"));
    }

    #[test]
    fn grants_are_additive_and_scoped() {
        let mut grants = Grants::default();
        grants.add_role(Role::Requester, &"repo:acme/widgets".parse().unwrap());
        grants.add_role(Role::LogViewer, &"tenant:payments".parse().unwrap());
        assert!(grants.allows(Permission::RunsCreate, Some("payments"), Some("acme/widgets")));
        assert!(!grants.allows(Permission::RunsCreate, Some("payments"), Some("acme/other")));
        assert!(grants.allows(Permission::LogsRead, Some("payments"), Some("acme/other")));
        assert!(!grants.allows(Permission::LogsRead, None, None));
        assert!(grants.holds_somewhere(Permission::RunsCreate));
        grants.retain(|p| p != Permission::RunsCreate);
        assert!(!grants.holds_somewhere(Permission::RunsCreate));
    }
}
