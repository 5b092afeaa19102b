//! Tenants own repositories. A tenant declares repository patterns
//! (`acme/ledger`, `acme/payments-*`, `acme/*`); a run's tenant is the one
//! whose pattern matches its repository, never what the caller names. No
//! two tenants may claim one repository, except through the catch-all `*`,
//! which only the default tenant may declare and which yields to every
//! other claim. A repository nobody owns gets no runs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{RepoName, ValidationError};

/// `owner/name`, where each part may hold `*` (any characters but `/`), or
/// `*` alone for every repository. Matched case-insensitively, as GitHub
/// names are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoPattern {
    owner: String,
    name: String,
}

impl RepoPattern {
    /// The catch-all `*`.
    pub fn every() -> Self {
        Self { owner: "*".to_owned(), name: "*".to_owned() }
    }

    pub fn is_catch_all(&self) -> bool {
        self.owner == "*" && self.name == "*"
    }

    pub fn matches(&self, repo: &RepoName) -> bool {
        glob_matches(&self.owner, &repo.owner().to_ascii_lowercase())
            && glob_matches(&self.name, &repo.name().to_ascii_lowercase())
    }

    /// Whether some repository matches both patterns.
    pub fn overlaps(&self, other: &RepoPattern) -> bool {
        globs_intersect(&self.owner, &other.owner) && globs_intersect(&self.name, &other.name)
    }
}

impl fmt::Display for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_catch_all() { f.write_str("*") } else { write!(f, "{}/{}", self.owner, self.name) }
    }
}

impl FromStr for RepoPattern {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" || s == "*/*" {
            return Ok(Self::every());
        }
        let invalid = || {
            ValidationError::new(
                "repositories",
                format!("`{s}` must be `owner/name`, either part with `*` wildcards, or `*` for every repository"),
            )
        };
        let (owner, name) = s.split_once('/').ok_or_else(invalid)?;
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 100
                && !p.contains("**")
                && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*'))
        };
        if !part_ok(owner) || !part_ok(name) {
            return Err(invalid());
        }
        Ok(Self { owner: owner.to_ascii_lowercase(), name: name.to_ascii_lowercase() })
    }
}

impl Serialize for RepoPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RepoPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(|e: ValidationError| serde::de::Error::custom(e.message))
    }
}

impl utoipa::PartialSchema for RepoPattern {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("`owner/name` with optional `*` wildcards in either part, or `*` (default tenant only)"))
            .examples([serde_json::json!("acme/payments-*")])
            .into()
    }
}

impl utoipa::ToSchema for RepoPattern {}

/// Whether `glob` (literals and `*`) matches all of `text`.
fn glob_matches(glob: &str, text: &str) -> bool {
    let (g, t) = (glob.as_bytes(), text.as_bytes());
    // The classic backtracking match: remember the last star and retry it
    // one character further on a mismatch.
    let (mut gi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if gi < g.len() && g[gi] == b'*' {
            star = Some(gi);
            mark = ti;
            gi += 1;
        } else if gi < g.len() && g[gi] == t[ti] {
            gi += 1;
            ti += 1;
        } else if let Some(s) = star {
            gi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|&c| c == b'*')
}

/// Whether one string matches both globs: a walk over pairs of positions,
/// where a star may stay put or swallow the other side's next symbol.
fn globs_intersect(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut seen = vec![vec![false; b.len() + 1]; a.len() + 1];
    let mut todo = vec![(0usize, 0usize)];
    while let Some((i, j)) = todo.pop() {
        if std::mem::replace(&mut seen[i][j], true) {
            continue;
        }
        if i == a.len() && j == b.len() {
            return true;
        }
        let star_a = i < a.len() && a[i] == b'*';
        let star_b = j < b.len() && b[j] == b'*';
        if star_a {
            todo.push((i + 1, j));
            if j < b.len() {
                todo.push((i, j + 1));
            }
        }
        if star_b {
            todo.push((i, j + 1));
            if i < a.len() {
                todo.push((i + 1, j));
            }
        }
        if !star_a && !star_b && i < a.len() && j < b.len() && a[i] == b[j] {
            todo.push((i + 1, j + 1));
        }
    }
    false
}

/// Where a tenant was declared: configuration files cannot be changed
/// through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TenantSource {
    Config,
    Api,
}

/// A tenant and what it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"name": "payments", "repositories": ["acme/ledger", "acme/payments-*"], "source": "api"}))]
pub struct Tenant {
    pub name: String,
    pub repositories: Vec<RepoPattern>,
    pub source: TenantSource,
    /// Who last changed it through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at_ms: Option<u64>,
}

/// Why a repository has no tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unowned {
    #[error("no tenant owns {0}; an administrator declares it under a tenant's `repositories`")]
    Nobody(String),
    #[error(
        "{repository} is claimed by both tenant {first} and tenant {second}; runs on it are refused until one claim goes"
    )]
    Contested { repository: String, first: String, second: String },
}

/// Two claims on the same repositories.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {tenant}'s `{pattern}` overlaps tenant {other}'s `{other_pattern}`")]
pub struct Overlap {
    pub tenant: String,
    pub pattern: String,
    pub other: String,
    pub other_pattern: String,
}

/// Every tenant, from configuration and the API together.
#[derive(Debug, Clone, Default)]
pub struct Tenancy {
    tenants: Vec<Tenant>,
    default_tenant: String,
}

impl Tenancy {
    pub fn new(tenants: Vec<Tenant>, default_tenant: &str) -> Self {
        Self { tenants, default_tenant: default_tenant.to_owned() }
    }

    pub fn tenants(&self) -> &[Tenant] {
        &self.tenants
    }

    pub fn get(&self, name: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.name == name)
    }

    /// The tenant that owns `repo`: the one tenant whose pattern matches,
    /// else the default tenant when it declares `*`.
    pub fn owner_of(&self, repo: &RepoName) -> Result<&str, Unowned> {
        let mut claims = self
            .tenants
            .iter()
            .filter(|t| t.repositories.iter().any(|p| !p.is_catch_all() && p.matches(repo)))
            .map(|t| t.name.as_str());
        match (claims.next(), claims.next()) {
            (Some(only), None) => Ok(only),
            (Some(first), Some(second)) => Err(Unowned::Contested {
                repository: repo.to_string(),
                first: first.to_owned(),
                second: second.to_owned(),
            }),
            (None, _) => self
                .get(&self.default_tenant)
                .filter(|t| t.repositories.iter().any(RepoPattern::is_catch_all))
                .map(|t| t.name.as_str())
                .ok_or_else(|| Unowned::Nobody(repo.to_string())),
        }
    }

    /// Whether `candidate` may join: its patterns parse, `*` is the default
    /// tenant's alone, and it claims nothing another tenant claims.
    pub fn admits(&self, candidate: &Tenant) -> Result<(), ValidationError> {
        crate::validate_tenant(&candidate.name)?;
        if candidate.repositories.is_empty() {
            return Err(ValidationError::new("repositories", "must name at least one repository pattern"));
        }
        if candidate.repositories.len() > 1000 {
            return Err(ValidationError::new("repositories", "must hold at most 1000 patterns"));
        }
        if candidate.name != self.default_tenant && candidate.repositories.iter().any(RepoPattern::is_catch_all) {
            return Err(ValidationError::new(
                "repositories",
                format!("only the default tenant ({}) may own `*`", self.default_tenant),
            ));
        }
        let others = self.tenants.iter().filter(|t| t.name != candidate.name);
        if let Some(overlap) = others.filter_map(|other| first_overlap(candidate, other)).next() {
            return Err(ValidationError::new("repositories", overlap.to_string()));
        }
        Ok(())
    }
}

fn first_overlap(a: &Tenant, b: &Tenant) -> Option<Overlap> {
    let real = |t: &Tenant| t.repositories.clone().into_iter().filter(|p| !p.is_catch_all()).collect::<Vec<_>>();
    let (ours, theirs) = (real(a), real(b));
    ours.iter().find_map(|p| {
        theirs.iter().find(|q| p.overlaps(q)).map(|q| Overlap {
            tenant: a.name.clone(),
            pattern: p.to_string(),
            other: b.name.clone(),
            other_pattern: q.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> RepoPattern {
        s.parse().unwrap()
    }

    fn tenant(name: &str, patterns: &[&str]) -> Tenant {
        Tenant {
            name: name.to_owned(),
            repositories: patterns.iter().map(|p| pattern(p)).collect(),
            source: TenantSource::Config,
            changed_by: None,
            changed_at_ms: None,
        }
    }

    #[test]
    fn patterns_match_within_one_part_and_ignore_case() {
        let repo = |s: &str| s.parse::<RepoName>().unwrap();
        assert!(pattern("acme/payments-*").matches(&repo("Acme/Payments-Ledger")));
        assert!(pattern("acme/*").matches(&repo("acme/x")));
        assert!(pattern("*/infra").matches(&repo("anyone/infra")));
        assert!(pattern("a*b*c/x").matches(&repo("aXbYbZc/x")));
        assert!(!pattern("acme/payments-*").matches(&repo("acme/payment")));
        assert!(!pattern("acme/*").matches(&repo("acme-corp/x")));
        assert!(pattern("*").matches(&repo("a/b")));
        for bad in ["acme", "acme/", "/x", "acme/a/b", "acme/**", "acme/x y", ""] {
            assert!(bad.parse::<RepoPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn overlap_is_decided_exactly() {
        let overlaps = |a: &str, b: &str| pattern(a).overlaps(&pattern(b));
        assert!(overlaps("acme/*", "acme/ledger"));
        assert!(overlaps("acme/pay*", "acme/*ments"));
        assert!(overlaps("*/x", "acme/*"));
        assert!(overlaps("acme/a*c", "acme/*b*"));
        assert!(!overlaps("acme/pay*", "acme/ledger"));
        assert!(!overlaps("acme/*", "other/*"));
        assert!(!overlaps("acme/a*", "acme/b*"));
        assert!(overlaps("acme/a*", "acme/*b"), "`ab` matches both");
        assert!(!overlaps("acme/ab", "acme/abc"));
    }

    #[test]
    fn the_owner_is_derived_and_only_the_default_tenant_catches_the_rest() {
        let tenancy = Tenancy::new(
            vec![tenant("payments", &["acme/payments-*", "acme/ledger"]), tenant("default", &["*"])],
            "default",
        );
        let repo = |s: &str| s.parse::<RepoName>().unwrap();
        assert_eq!(tenancy.owner_of(&repo("acme/ledger")), Ok("payments"));
        assert_eq!(tenancy.owner_of(&repo("acme/payments-api")), Ok("payments"));
        assert_eq!(tenancy.owner_of(&repo("acme/widgets")), Ok("default"));
        let strict = Tenancy::new(vec![tenant("payments", &["acme/ledger"])], "default");
        assert!(matches!(strict.owner_of(&repo("acme/widgets")), Err(Unowned::Nobody(_))));
        assert!(tenancy.admits(&tenant("search", &["acme/search-*"])).is_ok());
        let err = tenancy.admits(&tenant("search", &["acme/*"])).unwrap_err();
        assert!(err.message.contains("payments"), "{}", err.message);
        assert!(tenancy.admits(&tenant("search", &["*"])).is_err(), "only the default tenant owns `*`");
        assert!(tenancy.admits(&tenant("payments", &["acme/ledger"])).is_ok(), "a tenant does not overlap itself");
        let contested = Tenancy::new(vec![tenant("a", &["acme/*"]), tenant("b", &["acme/x"])], "default");
        assert!(matches!(contested.owner_of(&repo("acme/x")), Err(Unowned::Contested { .. })));
    }
}
