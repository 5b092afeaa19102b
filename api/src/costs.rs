//! `GET /v1/tenants/{tenant}/costs`: what a tenant's runs used and cost,
//! from the cost ledger `finish.lua` keeps (a run counts on the UTC day it
//! ended), by day, repository, requester or model, with the tenant's
//! daily budgets beside the spend.

use actix_web::{get, web};
use common::validate_tenant;
use serde::{Deserialize, Serialize};
use store::costs::{LEDGER_DAYS, Spent};
use time::{Date, Duration, OffsetDateTime};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Scoped, need};
use crate::problem::Problem;
use crate::startup::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CostQuery {
    /// First UTC day (default: 29 days before `until`). A report covers at
    /// most 366 days: an earlier `since` is moved up, and the answer's
    /// `since` says where it starts.
    #[param(value_type = Option<String>, format = Date, example = "2026-11-01")]
    pub since: Option<String>,
    /// Last UTC day (default: today).
    #[param(value_type = Option<String>, format = Date, example = "2026-11-30")]
    pub until: Option<String>,
    /// How to group the spend (default `day`).
    #[param(value_type = Option<GroupBy>, inline)]
    pub group_by: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// Each UTC day, with the tenant's daily budgets beside its spend.
    #[default]
    Day,
    Repository,
    Requester,
    /// `provider/model`.
    Model,
}

impl GroupBy {
    fn ledger_group(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::Repository => "repository",
            GroupBy::Requester => "requester",
            GroupBy::Model => "model",
        }
    }
}

/// What some runs used and cost.
#[derive(Debug, Serialize, ToSchema)]
pub struct CostLine {
    /// The day, repository, requester or `provider/model`; absent for the total.
    #[schema(example = "openai/gpt-4.1")]
    pub key: Option<String>,
    pub runs: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    #[schema(example = 1.2345)]
    pub cost_usd: f64,
    /// The tenant's daily cost budget (`group_by=day`, when one is set).
    pub budget_usd: Option<f64>,
    /// The tenant's daily token budget (`group_by=day`, when one is set).
    pub budget_tokens: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CostReport {
    pub tenant: String,
    pub since: String,
    pub until: String,
    pub group_by: GroupBy,
    pub total: CostLine,
    /// Largest cost first (`group_by=day`: in day order).
    pub groups: Vec<CostLine>,
}

/// A tenant's runs' tokens and cost over a span of days, grouped.
#[utoipa::path(
    tag = "audit",
    params(("tenant" = String, Path, description = "Tenant name", example = "payments"), CostQuery),
    responses(
        (status = 200, body = CostReport),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "A day that is not one, or an unknown grouping"),
    ),
    security(("bearer" = ["audit.read"]))
)]
#[get("/v1/tenants/{tenant}/costs")]
pub async fn tenant_costs(
    caller: Scoped<need::AuditRead>,
    state: web::Data<AppState>,
    tenant: web::Path<String>,
    query: web::Query<CostQuery>,
) -> Result<web::Json<CostReport>, Problem> {
    let tenant = tenant.into_inner();
    validate_tenant(&tenant)?;
    caller.on_tenant(&tenant)?;
    let today = OffsetDateTime::now_utc().date();
    let until = match &query.until {
        Some(text) => day("until", text)?,
        None => today,
    };
    let since = match &query.since {
        Some(text) => day("since", text)?,
        None => until - Duration::days(29),
    };
    // At most 366 days, none older than the ledger keeps; none at all when
    // `since` is after `until`.
    let oldest = (until - Duration::days(365)).max(today - Duration::days(LEDGER_DAYS as i64));
    let since = since.max(oldest);
    let group_by = match query.group_by.as_deref() {
        None | Some("day") => GroupBy::Day,
        Some("repository") => GroupBy::Repository,
        Some("requester") => GroupBy::Requester,
        Some("model") => GroupBy::Model,
        Some(_) => {
            return Err(
                Problem::bad_request("`group_by` must be day, repository, requester or model").field("group_by")
            );
        }
    };
    let epoch = Date::from_ordinal_date(1970, 1).unwrap_or(since);
    let number = |d: Date| (d - epoch).whole_days().max(0) as u64;
    let ledgers = if since <= until {
        state.queue.cost_ledgers(&tenant, number(since), number(until)).await?
    } else {
        Vec::new()
    };
    let gateway = &state.config.gateway;
    let budget_usd = (gateway.tenant_daily_cost_budget_usd > 0.0).then_some(gateway.tenant_daily_cost_budget_usd);
    let budget_tokens = (gateway.tenant_daily_token_budget > 0).then_some(gateway.tenant_daily_token_budget);
    let mut total = Spent::default();
    let mut groups: std::collections::BTreeMap<String, Spent> = std::collections::BTreeMap::new();
    for (offset, (_, ledger)) in ledgers.iter().enumerate() {
        let date = since + Duration::days(offset as i64);
        for ((group, key), spent) in ledger {
            if group == "total" {
                add(&mut total, spent);
                if group_by == GroupBy::Day {
                    add(groups.entry(date.to_string()).or_default(), spent);
                }
            } else if group == group_by.ledger_group() {
                add(groups.entry(key.clone()).or_default(), spent);
            }
        }
    }
    let line = |key: Option<String>, s: &Spent, daily: bool| CostLine {
        key,
        runs: s.runs,
        tokens_in: s.tokens_in,
        tokens_out: s.tokens_out,
        cost_usd: s.cost_micro_usd as f64 / 1_000_000.0,
        budget_usd: if daily { budget_usd } else { None },
        budget_tokens: if daily { budget_tokens } else { None },
    };
    let daily = group_by == GroupBy::Day;
    let mut lines: Vec<CostLine> = groups.iter().map(|(key, s)| line(Some(key.clone()), s, daily)).collect();
    if !daily {
        lines.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd).then(b.runs.cmp(&a.runs)));
    }
    Ok(web::Json(CostReport {
        tenant,
        since: since.to_string(),
        until: until.to_string(),
        group_by,
        total: line(None, &total, false),
        groups: lines,
    }))
}

fn add(into: &mut Spent, spent: &Spent) {
    into.runs += spent.runs;
    into.tokens_in += spent.tokens_in;
    into.tokens_out += spent.tokens_out;
    into.cost_micro_usd += spent.cost_micro_usd;
}

/// A `YYYY-MM-DD` day, or a problem naming `field`.
fn day(field: &'static str, text: &str) -> Result<Date, Problem> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(text, &format)
        .map_err(|_| Problem::bad_request(format!("`{field}` must be a day as YYYY-MM-DD")).field(field))
}
