//! The cost ledger: what each tenant's runs used and cost, per UTC day, by
//! group (all runs, repository, requester, model). `finish.lua` adds a run
//! to the ledger of the day it ends in the same script that ends it, so a
//! report's totals are the sum of the run records, exactly (micro-dollars).

use std::collections::BTreeMap;

use common::{RunFacts, RunSpec};

use crate::{QueueError, RunQueue};

/// How long a day's ledger is kept.
pub const LEDGER_DAYS: u64 = 400;

/// What a group used: runs, tokens in and out, micro-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    pub runs: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_micro_usd: u64,
}

/// One day's ledger: `total` (key ``), and each repository, requester and
/// model (`provider/model`) by group.
pub type DayLedger = BTreeMap<(String, String), Spent>;

const SEP: char = '\t';

/// The ledger's increments for a run that ends with `facts`:
/// `<group>\t<key>\t<measure>` → n.
pub(crate) fn ledger_entries(spec: &RunSpec, facts: &RunFacts) -> Vec<(String, u64)> {
    let usage = facts.usage;
    let mut groups = vec![
        ("total", String::new(), 1, usage),
        ("repository", spec.repository.to_string().to_ascii_lowercase(), 1, usage),
        ("requester", spec.requested_by.clone(), 1, usage),
    ];
    for model in &facts.models {
        groups.push(("model", format!("{}/{}", model.provider, model.model), 1, model.usage));
    }
    let mut entries = Vec::new();
    for (group, key, runs, usage) in groups {
        let key = key.replace(SEP, " ");
        for (measure, n) in
            [("runs", runs), ("in", usage.tokens_in), ("out", usage.tokens_out), ("micro", usage.cost_micro_usd)]
        {
            if n > 0 {
                entries.push((format!("{group}{SEP}{key}{SEP}{measure}"), n));
            }
        }
    }
    entries
}

impl RunQueue {
    /// The ledgers of `tenant` for days `from..=to` (days since the epoch),
    /// in one round trip.
    pub async fn cost_ledgers(&self, tenant: &str, from: u64, to: u64) -> Result<Vec<(u64, DayLedger)>, QueueError> {
        let mut pipe = redis::pipe();
        for day in from..=to {
            pipe.hgetall(self.keys.cost_ledger(tenant, day));
        }
        let mut conn = self.conn.clone();
        let days: Vec<BTreeMap<String, u64>> = pipe.query_async(&mut conn).await?;
        Ok((from..=to)
            .zip(days)
            .map(|(day, fields)| {
                let mut ledger = DayLedger::new();
                for (field, n) in fields {
                    let mut parts = field.splitn(3, SEP);
                    let (Some(group), Some(key), Some(measure)) = (parts.next(), parts.next(), parts.next()) else {
                        continue;
                    };
                    let spent = ledger.entry((group.to_owned(), key.to_owned())).or_default();
                    match measure {
                        "runs" => spent.runs += n,
                        "in" => spent.tokens_in += n,
                        "out" => spent.tokens_out += n,
                        "micro" => spent.cost_micro_usd += n,
                        _ => {}
                    }
                }
                (day, ledger)
            })
            .collect())
    }
}
