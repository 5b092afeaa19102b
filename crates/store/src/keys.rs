//! Every Redis key Paddock's Rust code uses is built here, and nowhere
//! else. Every key is `{<namespace>}:<suffix>`: the braces make the
//! namespace the hash tag, so one deployment's keys share a Cluster slot and
//! a script may touch any of them. The Lua scripts get the prefix as
//! `KEYS[1]` (which also routes them to the slot's node) and build the keys
//! they own from it (`lua/lib.lua`); ARCHITECTURE.md's key table lists both,
//! and a test here checks that every key built below is in it.

use std::fmt::Display;
use std::sync::Arc;

/// The key schema of one namespace.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: Arc<str>,
}

/// The hashes of identity and compliance records, one field per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    /// Binding id → role binding.
    Bindings,
    /// Name → service account.
    ServiceAccounts,
    /// Token id → token record.
    Tokens,
    /// Name → user status (deactivation).
    Users,
    /// Hold id → legal hold.
    Holds,
    /// Export id → export job.
    Exports,
    /// Tenant name → tenant declared through the API.
    Tenants,
    /// Person id (`<issuer>#<sub>`, or `declared#<email>`) → person.
    People,
    /// Verified email (lowercase) → person id.
    PeopleByEmail,
}

impl Records {
    pub const ALL: [Records; 9] = [
        Records::Bindings,
        Records::ServiceAccounts,
        Records::Tokens,
        Records::Users,
        Records::Holds,
        Records::Exports,
        Records::Tenants,
        Records::People,
        Records::PeopleByEmail,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Records::Bindings => "rbac:bindings",
            Records::ServiceAccounts => "sa:accounts",
            Records::Tokens => "sa:tokens",
            Records::Users => "users",
            Records::Holds => "holds",
            Records::Exports => "exports",
            Records::Tenants => "tenants",
            Records::People => "people",
            Records::PeopleByEmail => "people:by-email",
        }
    }

    /// What a record of this hash is called in errors.
    pub fn what(self) -> &'static str {
        match self {
            Records::Bindings => "binding",
            Records::ServiceAccounts => "service account",
            Records::Tokens => "token",
            Records::Users => "user status",
            Records::Holds => "legal hold",
            Records::Exports => "export",
            Records::Tenants => "tenant",
            Records::People => "person",
            Records::PeopleByEmail => "person id",
        }
    }
}

impl Keys {
    pub fn new(namespace: &str) -> Self {
        Self { prefix: format!("{{{namespace}}}:").into() }
    }

    /// `{<namespace>}:`, what every script gets as `KEYS[1]`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn at(&self, suffix: impl Display) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// A run's record (hash).
    pub fn job(&self, id: impl Display) -> String {
        self.at(format_args!("job:{id}"))
    }

    /// The tail of a running run's output (list).
    pub fn log(&self, id: impl Display) -> String {
        self.at(format_args!("log:{id}"))
    }

    /// The Pub/Sub channel on which a worker is nudged about cancels.
    pub fn control(&self, worker: impl Display) -> String {
        self.at(format_args!("ctl:{worker}"))
    }

    /// Worker names by last claim or heartbeat (zset).
    pub fn workers(&self) -> String {
        self.at("workers")
    }

    /// Dead letters by time (zset) and their reasons (hash).
    pub fn dead(&self) -> String {
        self.at("dead")
    }

    pub fn dead_reasons(&self) -> String {
        self.at("dead:reason")
    }

    /// The one run counter (hash): `<state>:<band>:<tenant>:<repo>` → runs.
    /// Every other depth figure is a sum of its fields.
    pub fn count(&self) -> String {
        self.at("count")
    }

    /// Runs each tenant holds a slot for (running or cancelling), by tenant
    /// (hash): what its cap is checked against.
    pub fn held(&self) -> String {
        self.at("held")
    }

    /// `t:<tenant>` and `r:<tenant>:<repo>` at their cap (set).
    pub fn parked(&self) -> String {
        self.at("parked")
    }

    /// The Pub/Sub channel on which idle workers are woken: a tenant became
    /// claimable in a band (the message).
    pub fn wake(&self) -> String {
        self.at("wake")
    }

    /// What a tenant's runs that ended on UTC day `day` (days since the
    /// epoch) used and cost, by group (hash of counters).
    pub fn cost_ledger(&self, tenant: impl Display, day: u64) -> String {
        self.at(format_args!("cost:{tenant}:{day}"))
    }

    /// Run ids in one state, for listing (lex zset; ULIDs, so the first is
    /// the oldest).
    pub fn state_index(&self, state: impl Display) -> String {
        self.at(format_args!("idx:state:{state}"))
    }

    /// Caps and weights (hash).
    pub fn limits(&self) -> String {
        self.at("limits")
    }

    /// Sandbox policy overrides (hash) and the provider policy (string).
    pub fn policy(&self) -> String {
        self.at("policy")
    }

    /// Counts changes of declared tenants and sandbox policies (so a run
    /// decided on what an API process read is refused once either changed).
    pub fn tenancy_version(&self) -> String {
        self.at("tenancy:version")
    }

    pub fn llm_policy(&self) -> String {
        self.at("llm_policy")
    }

    /// A run's token and cost budget (hash).
    pub fn run_budget(&self, run: impl Display) -> String {
        self.at(format_args!("budget:run:{run}"))
    }

    /// A tenant's budget on one UTC day (hash).
    pub fn tenant_day_budget(&self, tenant: impl Display, day: impl Display) -> String {
        self.at(format_args!("budget:tenant:{tenant}:{day}"))
    }

    /// A GitHub webhook delivery seen (string, 7 days).
    pub fn delivery(&self, id: impl Display) -> String {
        self.at(format_args!("delivery:{id}"))
    }

    /// A tenant's registered secrets (hash).
    pub fn tenant_secrets(&self, tenant: impl Display) -> String {
        self.at(format_args!("secrets:{tenant}"))
    }

    /// A live run token's grant, by the token's SHA-256 (string).
    pub fn gateway_token(&self, hash: impl Display) -> String {
        self.at(format_args!("gwtok:{hash}"))
    }

    /// The hash of a run's live token (string).
    pub fn run_gateway_token(&self, run: impl Display) -> String {
        self.at(format_args!("gwtok:run:{run}"))
    }

    /// A standalone gateway's finished calls of a run (list) and the
    /// count of calls still in flight (string).
    pub fn gateway_calls(&self, run: impl Display) -> String {
        self.at(format_args!("gwcalls:{run}"))
    }

    pub fn gateway_calls_open(&self, run: impl Display) -> String {
        self.at(format_args!("gwcalls:open:{run}"))
    }

    /// One of the identity and compliance hashes.
    pub fn records(&self, records: Records) -> String {
        self.at(records.suffix())
    }

    /// A service-account token id by the SHA-256 of its value (string).
    pub fn token_by_hash(&self, hash: impl Display) -> String {
        self.at(format_args!("sa:hash:{hash}"))
    }

    /// The newest audit events, oldest first (list): an index.
    pub fn audit_events(&self) -> String {
        self.at("audit:events")
    }

    /// Audit events written with their change and not yet shipped to the
    /// bucket, oldest first (list of `<seq> <ms> <mac> <json>`).
    pub fn audit_pending(&self) -> String {
        self.at("audit:pending")
    }

    /// The last number given to a pending audit event (string).
    pub fn audit_seq(&self) -> String {
        self.at("audit:seq")
    }

    /// The number of the last pending event shipped (string).
    pub fn audit_shipped(&self) -> String {
        self.at("audit:shipped")
    }

    /// How many of run `id`'s events the audit index holds.
    pub fn audit_indexed(&self, id: impl Display) -> String {
        self.at(format_args!("audit:indexed:{id}"))
    }

    /// The last retention sweep's report (string).
    pub fn last_sweep(&self) -> String {
        self.at("retention:last")
    }

    /// A fleet-wide lock (string with a TTL).
    pub fn lock(&self, name: impl Display) -> String {
        self.at(format_args!("lock:{name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key this module builds, with placeholders for its parts.
    fn every_key(keys: &Keys) -> Vec<String> {
        let mut all = vec![
            keys.job("<id>"),
            keys.log("<id>"),
            keys.control("<worker>"),
            keys.workers(),
            keys.dead(),
            keys.dead_reasons(),
            keys.count(),
            keys.held(),
            keys.parked(),
            keys.wake(),
            keys.state_index("<state>"),
            keys.cost_ledger("<tenant>", 0).replace(":0", ":<day>"),
            keys.limits(),
            keys.policy(),
            keys.tenancy_version(),
            keys.llm_policy(),
            keys.run_budget("<id>"),
            keys.tenant_day_budget("<t>", "<day>"),
            keys.delivery("<id>"),
            keys.tenant_secrets("<tenant>"),
            keys.gateway_token("<sha256>"),
            keys.run_gateway_token("<id>"),
            keys.gateway_calls("<id>"),
            keys.gateway_calls_open("<id>"),
            keys.token_by_hash("<sha256>"),
            keys.audit_events(),
            keys.audit_indexed("<id>"),
            keys.audit_pending(),
            keys.audit_seq(),
            keys.audit_shipped(),
            keys.last_sweep(),
            keys.lock("<name>"),
        ];
        all.extend(Records::ALL.map(|r| keys.records(r)));
        all
    }

    #[test]
    fn every_key_is_under_the_namespace_hash_tag_and_in_the_architecture_key_table() {
        let keys = Keys::new("prod");
        let map = include_str!("../../../ARCHITECTURE.md");
        let table: Vec<&str> = map.lines().filter(|l| l.starts_with("| `")).collect();
        for key in every_key(&keys) {
            let suffix = key.strip_prefix("{prod}:").unwrap_or_else(|| panic!("{key} is not under {{prod}}:"));
            let listed = format!("`{suffix}`");
            assert!(
                table.iter().any(|row| row.split('|').nth(1).is_some_and(|cell| cell.contains(&listed))),
                "ARCHITECTURE.md's key table does not list {listed}"
            );
        }
    }
}
