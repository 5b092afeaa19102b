//! The Lua scripts, one per state transition (`lua/`, with `lib.lua`
//! prepended to each), and one arguments struct per script: its
//! `ScriptArgs::push` is the only place that orders the script's `ARGV`.
//! Every script gets the namespace prefix as `KEYS[1]`.

use redis::{FromRedisValue, Script, ScriptInvocation};

use super::conn::Conn;
use super::keys::Keys;

pub(crate) struct Scripts {
    enqueue: Script,
    claim: Script,
    heartbeat: Script,
    finish: Script,
    reap: Script,
    cancel: Script,
    limits: Script,
    meter: Script,
    change: Script,
    gwcall: Script,
    list: Script,
    approve: Script,
    idem: Script,
    ship: Script,
    audit: Script,
}

impl Scripts {
    pub(crate) fn load() -> Self {
        let lib = include_str!("lua/lib.lua");
        let with_lib = |body: &str| Script::new(&format!("{lib}\n{body}"));
        Self {
            enqueue: with_lib(include_str!("lua/enqueue.lua")),
            claim: with_lib(include_str!("lua/claim.lua")),
            heartbeat: with_lib(include_str!("lua/heartbeat.lua")),
            finish: with_lib(include_str!("lua/finish.lua")),
            reap: with_lib(include_str!("lua/reap.lua")),
            cancel: with_lib(include_str!("lua/cancel.lua")),
            limits: with_lib(include_str!("lua/limits.lua")),
            meter: with_lib(include_str!("lua/meter.lua")),
            change: with_lib(include_str!("lua/change.lua")),
            gwcall: with_lib(include_str!("lua/gwcall.lua")),
            list: with_lib(include_str!("lua/list.lua")),
            approve: with_lib(include_str!("lua/approve.lua")),
            idem: with_lib(include_str!("lua/idem.lua")),
            ship: with_lib(include_str!("lua/ship.lua")),
            audit: with_lib(include_str!("lua/audit.lua")),
        }
    }

    /// Runs the script `args` belong to, in one round trip.
    pub(crate) async fn run<A: ScriptArgs, T: FromRedisValue>(
        &self,
        conn: &Conn,
        keys: &Keys,
        args: &A,
    ) -> redis::RedisResult<T> {
        let mut invocation: ScriptInvocation<'_> = A::script(self).key(keys.prefix());
        args.push(&mut invocation);
        let mut conn = conn.clone();
        invocation.invoke_async(&mut conn).await
    }
}

/// The arguments of one script.
pub(crate) trait ScriptArgs {
    fn script(scripts: &Scripts) -> &Script;
    /// Appends the arguments in the script's `ARGV` order.
    fn push(&self, invocation: &mut ScriptInvocation<'_>);
}

/// One new run, as `enqueue.lua` takes it.
pub(crate) struct EnqueueArgs {
    pub id: String,
    pub tenant: String,
    pub repository: String,
    pub band: &'static str,
    pub spec_json: String,
    pub max_attempts: u32,
    /// Empty without an `Idempotency-Key`.
    pub idempotency_key: String,
    pub fingerprint: String,
    pub idempotency_ttl_ms: u64,
    /// Held for approval instead of queued.
    pub hold: bool,
    /// A follow-up's pull request lane (`<repo>#<n>`); empty otherwise.
    pub lane: String,
    /// How long a run superseded at once is kept.
    pub ttl_seconds: u64,
    /// The run request's audit event, sealed.
    pub event: common::audit::SealedEvent,
    /// The `tenancy:version` the run was decided under; `None`: unchecked.
    pub tenancy: Option<u64>,
}

/// `enqueue.lua`: store new runs and make them claimable, in one call,
/// unless the oldest pending audit event is older than `max_backlog_ms`.
pub(crate) struct EnqueueManyArgs {
    pub runs: Vec<EnqueueArgs>,
    pub max_backlog_ms: u64,
    pub audit_keep: isize,
}

impl ScriptArgs for EnqueueManyArgs {
    fn script(scripts: &Scripts) -> &Script {
        &scripts.enqueue
    }

    fn push(&self, inv: &mut ScriptInvocation<'_>) {
        inv.arg(self.runs.len()).arg(self.max_backlog_ms).arg(self.audit_keep);
        for run in &self.runs {
            inv.arg(&run.id).arg(&run.tenant).arg(&run.repository).arg(run.band).arg(&run.spec_json);
            inv.arg(run.max_attempts).arg(&run.idempotency_key).arg(&run.fingerprint).arg(run.idempotency_ttl_ms);
            inv.arg(if run.hold { "1" } else { "0" }).arg(&run.lane).arg(run.ttl_seconds);
            inv.arg(&run.event.mac).arg(&run.event.json);
            inv.arg(run.tenancy.map(|v| v.to_string()).unwrap_or_default());
        }
    }
}

/// `idem.lua`: reserve an idempotency key for a run, or release it.
pub(crate) struct IdemArgs<'a> {
    pub release: bool,
    pub key: &'a str,
    pub id: &'a str,
    pub fingerprint: &'a str,
    pub ttl_ms: u64,
}

impl ScriptArgs for IdemArgs<'_> {
    fn script(scripts: &Scripts) -> &Script {
        &scripts.idem
    }

    fn push(&self, inv: &mut ScriptInvocation<'_>) {
        inv.arg(if self.release { "release" } else { "reserve" }).arg(self.key).arg(self.id);
        inv.arg(self.fingerprint).arg(self.ttl_ms);
    }
}

/// `audit.lua`: sealed events into the pending log and the index.
pub(crate) struct AuditArgs<'a> {
    pub max_backlog_ms: u64,
    pub keep: isize,
    /// The run they are about (its share of the index is capped), if any.
    pub run: &'a str,
    pub cap: u64,
    pub events: &'a [common::audit::SealedEvent],
}

impl ScriptArgs for AuditArgs<'_> {
    fn script(scripts: &Scripts) -> &Script {
        &scripts.audit
    }

    fn push(&self, inv: &mut ScriptInvocation<'_>) {
        inv.arg(self.max_backlog_ms).arg(self.keep).arg(self.run).arg(self.cap);
        for event in self.events {
            inv.arg(&event.mac).arg(&event.json);
        }
    }
}

/// `gwcall.lua`: a standalone gateway's call counted in flight, from its
/// token's lookup to its booking.
pub(crate) enum GatewayCallArgs<'a> {
    Open {
        token_hash: &'a str,
    },
    /// `call`: the record to hand to the run's worker; `None` for a call
    /// that ended unbooked.
    Done {
        run: &'a str,
        call: Option<&'a str>,
    },
}

impl ScriptArgs for GatewayCallArgs<'_> {
    fn script(scripts: &Scripts) -> &Script {
        &scripts.gwcall
    }

    fn push(&self, inv: &mut ScriptInvocation<'_>) {
        match self {
            GatewayCallArgs::Open { token_hash } => inv.arg("open").arg(*token_hash),
            GatewayCallArgs::Done { run, call: Some(call) } => inv.arg("done").arg(*run).arg(*call),
            GatewayCallArgs::Done { run, call: None } => inv.arg("done").arg(*run),
        };
    }
}

/// `ship.lua`: the audit shipper's lease, and trimming what it shipped.
pub(crate) enum ShipArgs<'a> {
    Lease { holder: &'a str, ttl_ms: u64 },
    Trim { holder: &'a str, n: usize, last_line: &'a str, shipped_through: u64 },
    Release { holder: &'a str },
}

impl ScriptArgs for ShipArgs<'_> {
    fn script(scripts: &Scripts) -> &Script {
        &scripts.ship
    }

    fn push(&self, inv: &mut ScriptInvocation<'_>) {
        match self {
            ShipArgs::Lease { holder, ttl_ms } => inv.arg("lease").arg(*holder).arg(*ttl_ms),
            ShipArgs::Trim { holder, n, last_line, shipped_through } => {
                inv.arg("trim").arg(*holder).arg(*n).arg(*last_line).arg(*shipped_through)
            }
            ShipArgs::Release { holder } => inv.arg("release").arg(*holder),
        };
    }
}

/// `claim.lua`: lease the next runs, up to `n`, to `worker`.
pub(crate) struct ClaimArgs<'a> {
    pub worker: &'a str,
    pub lease_ms: u64,
    pub n: usize,
}

impl ScriptArgs for ClaimArgs<'_> {
    fn script(scripts: &Scripts) -> &Script {
        &scripts.claim
    }

    fn push(&self, inv: &mut ScriptInvocation<'_>) {
        inv.arg(self.worker).arg(self.lease_ms).arg(self.n);
    }
}

/// `heartbeat.lua`: extend the leases `worker` holds, `(id, epoch)` each.
pub(crate) struct HeartbeatArgs<'a> {
    pub worker: &'a str,
    pub lease_ms: u64,
    pub held: Vec<(String, u64)>,
}

impl ScriptArgs for HeartbeatArgs<'_> {
    fn script(scripts: &Scripts) -> &Script {
        &scripts.heartbeat
    }

    fn push(&self, inv: &mut ScriptInvocation<'_>) {
        inv.arg(self.worker).arg(self.lease_ms);
        for (id, epoch) in &self.held {
            inv.arg(id).arg(*epoch);
        }
    }
}

/// One run handed back under its epoch, as `finish.lua` takes it.
pub(crate) struct FinishArgs {
    pub id: String,
    pub epoch: u64,
    /// `done`, `retry` or `release`.
    pub outcome: &'static str,
    pub reason_json: String,
    pub final_state: &'static str,
    pub artifacts_json: String,
    pub ttl_seconds: u64,
    pub retry_delay_ms: u64,
    pub dead_keep_ms: u64,
    pub facts_json: String,
    /// The tenant's cost ledger of the day, and its increments
    /// (`[[field, n], ...]`) for a run that ends; empty otherwise.
    pub ledger_key: String,
    pub ledger_json: String,
    pub ledger_ttl_seconds: u64,
}

/// `finish.lua`: hand runs back, each under its epoch, in one call.
pub(crate) struct FinishManyArgs(pub Vec<FinishArgs>);

impl ScriptArgs for FinishManyArgs {
    fn script(scripts: &Scripts) -> &Script {
        &scripts.finish
    }

    fn push(&self, inv: &mut ScriptInvocation<'_>) {
        inv.arg(self.0.len());
        for run in &self.0 {
            inv.arg(&run.id).arg(run.epoch).arg(run.outcome);
            inv.arg(&run.reason_json).arg(run.final_state).arg(&run.artifacts_json);
            inv.arg(run.ttl_seconds).arg(run.retry_delay_ms).arg(run.dead_keep_ms).arg(&run.facts_json);
            inv.arg(&run.ledger_key).arg(&run.ledger_json).arg(run.ledger_ttl_seconds);
        }
    }
}

/// `reap.lua`: reclaim up to `limit` expired leases.
pub(crate) struct ReapArgs<'a> {
    pub limit: usize,
    pub ttl_seconds: u64,
    /// The stop reason of a run with no attempt left (JSON).
    pub reason_json: &'a str,
    pub dead_keep_ms: u64,
    /// After this many lost workers a run is failed, not queued again.
    pub max_losses: u32,
    /// Its stop reason then (JSON).
    pub lost_reason_json: &'a str,
}

impl ScriptArgs for ReapArgs<'_> {
    fn script(scripts: &Scripts) -> &Script {
        &scripts.reap
    }

    fn push(&self, inv: &mut ScriptInvocation<'_>) {
        inv.arg(self.limit).arg(self.ttl_seconds).arg(self.reason_json).arg(self.dead_keep_ms);
        inv.arg(self.max_losses).arg(self.lost_reason_json);
    }
}

/// `cancel.lua`: cancel a run on behalf of `by`.
pub(crate) struct CancelArgs<'a> {
    pub id: &'a str,
    pub by: &'a str,
    pub ttl_seconds: u64,
}

impl ScriptArgs for CancelArgs<'_> {
    fn script(scripts: &Scripts) -> &Script {
        &scripts.cancel
    }

    fn push(&self, inv: &mut ScriptInvocation<'_>) {
        inv.arg(self.id).arg(self.by).arg(self.ttl_seconds);
    }
}

/// `approve.lua`: let a run held for approval join its queue.
pub(crate) struct ApproveArgs<'a> {
    pub id: &'a str,
    pub by: &'a str,
    pub ttl_seconds: u64,
}

impl ScriptArgs for ApproveArgs<'_> {
    fn script(scripts: &Scripts) -> &Script {
        &scripts.approve
    }

    fn push(&self, inv: &mut ScriptInvocation<'_>) {
        inv.arg(self.id).arg(self.by).arg(self.ttl_seconds);
    }
}

/// `limits.lua`: set or clear a cap (`kind` `tenant` or `repo`) or weight.
pub(crate) struct LimitsArgs<'a> {
    pub kind: &'a str,
    pub tenant: &'a str,
    /// Empty for a tenant.
    pub repo: &'a str,
    pub max_running: Option<u32>,
    pub weight: Option<f64>,
}

impl ScriptArgs for LimitsArgs<'_> {
    fn script(scripts: &Scripts) -> &Script {
        &scripts.limits
    }

    fn push(&self, inv: &mut ScriptInvocation<'_>) {
        inv.arg(self.kind).arg(self.tenant).arg(self.repo);
        inv.arg(self.max_running.map(|m| m.to_string()).unwrap_or_default());
        inv.arg(self.weight.map(|w| w.to_string()).unwrap_or_default());
    }
}

/// One shared rate as `meter.lua` takes it: its name, its emission
/// interval (ms, may be fractional), its burst, and the cells a call takes
/// (or gives back).
pub(crate) struct RateArg<'a> {
    pub name: &'a str,
    pub interval_ms: f64,
    pub burst: u64,
    pub cells: u64,
}

/// A budget reservation as `meter.lua`'s `admit` takes it.
pub(crate) struct ReserveArg<'a> {
    pub run: &'a str,
    pub tenant: &'a str,
    /// Tokens: amount, run limit, tenant limit (0: none).
    pub tokens: [u64; 3],
    /// Micro-dollars, in the same order.
    pub cost: [u64; 3],
}

/// `meter.lua`: rate limits and budgets.
pub(crate) enum MeterArgs<'a> {
    /// Take every rate's cells and reserve the budget, or nothing.
    Admit { rates: &'a [RateArg<'a>], reserve: Option<ReserveArg<'a>> },
    /// Give back cells taken and not used.
    Refund { rates: &'a [RateArg<'a>] },
    /// Release a reservation made on `day`, booking what was used.
    Settle { run: &'a str, tenant: &'a str, day: u64, tokens: [u64; 2], cost: [u64; 2] },
}

impl ScriptArgs for MeterArgs<'_> {
    fn script(scripts: &Scripts) -> &Script {
        &scripts.meter
    }

    fn push(&self, inv: &mut ScriptInvocation<'_>) {
        let push_rates = |inv: &mut ScriptInvocation<'_>, rates: &[RateArg<'_>]| {
            inv.arg(rates.len());
            for rate in rates {
                inv.arg(rate.name).arg(rate.interval_ms).arg(rate.burst).arg(rate.cells);
            }
        };
        match self {
            MeterArgs::Admit { rates, reserve } => {
                inv.arg("admit");
                push_rates(inv, rates);
                match reserve {
                    Some(r) => {
                        inv.arg(r.run).arg(r.tenant);
                        for n in r.tokens.iter().chain(&r.cost) {
                            inv.arg(*n);
                        }
                    }
                    None => {
                        inv.arg("").arg("");
                    }
                }
            }
            MeterArgs::Refund { rates } => {
                inv.arg("refund");
                push_rates(inv, rates);
            }
            MeterArgs::Settle { run, tenant, day, tokens, cost } => {
                inv.arg("settle").arg(*run).arg(*tenant).arg(*day);
                inv.arg(tokens[0]).arg(tokens[1]).arg(cost[0]).arg(cost[1]);
            }
        }
    }
}

/// `change.lua`: an audited change to identity or admin records: its
/// event (sealed, or for the index only without a `mac`), a condition and
/// the writes, each command as its argument count and its arguments.
pub(crate) struct ChangeArgs<'a> {
    pub max_backlog_ms: u64,
    pub keep: isize,
    /// Empty: the event goes to the index only.
    pub mac: &'a str,
    pub json: &'a str,
    /// A read that, answering non-zero, leaves everything unwritten.
    pub unless: Option<&'a redis::Cmd>,
    pub changes: &'a redis::Pipeline,
}

impl ScriptArgs for ChangeArgs<'_> {
    fn script(scripts: &Scripts) -> &Script {
        &scripts.change
    }

    fn push(&self, inv: &mut ScriptInvocation<'_>) {
        inv.arg(self.max_backlog_ms).arg(self.keep).arg(self.mac).arg(self.json);
        match self.unless {
            Some(condition) => push_command(inv, condition),
            None => {
                inv.arg(0);
            }
        }
        for change in self.changes.cmd_iter() {
            push_command(inv, change);
        }
    }
}

/// One command as `change.lua` reads it: its argument count, then its
/// name and arguments.
fn push_command(inv: &mut ScriptInvocation<'_>, command: &redis::Cmd) {
    let args: Vec<&[u8]> = command
        .args_iter()
        .filter_map(|arg| match arg {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect();
    inv.arg(args.len());
    for arg in args {
        inv.arg(arg);
    }
}

/// `list.lua`: a page of ids from a lex index after a cursor.
pub(crate) struct ListArgs<'a> {
    /// A state, or `all`.
    pub index: &'a str,
    /// Empty for the first page.
    pub cursor: &'a str,
    pub limit: usize,
}

impl ScriptArgs for ListArgs<'_> {
    fn script(scripts: &Scripts) -> &Script {
        &scripts.list
    }

    fn push(&self, inv: &mut ScriptInvocation<'_>) {
        inv.arg(self.index).arg(self.cursor).arg(self.limit);
    }
}

#[cfg(test)]
mod tests {
    /// Each script's own body (without `lib.lua`), by name.
    const BODIES: [(&str, &str); 15] = [
        ("enqueue", include_str!("lua/enqueue.lua")),
        ("claim", include_str!("lua/claim.lua")),
        ("heartbeat", include_str!("lua/heartbeat.lua")),
        ("finish", include_str!("lua/finish.lua")),
        ("reap", include_str!("lua/reap.lua")),
        ("cancel", include_str!("lua/cancel.lua")),
        ("limits", include_str!("lua/limits.lua")),
        ("meter", include_str!("lua/meter.lua")),
        ("change", include_str!("lua/change.lua")),
        ("gwcall", include_str!("lua/gwcall.lua")),
        ("list", include_str!("lua/list.lua")),
        ("approve", include_str!("lua/approve.lua")),
        ("idem", include_str!("lua/idem.lua")),
        ("ship", include_str!("lua/ship.lua")),
        ("audit", include_str!("lua/audit.lua")),
    ];
    /// `lib.lua` defers index writes to `flush` and audit events to
    /// `flush_audit`: a script that can move a run (or append an event)
    /// and returns without flushing would lose them.
    #[test]
    fn every_script_that_moves_runs_flushes_before_each_return() {
        let moves = ["transition(", "finalize(", "enter_lane(", "make_ready(", "unqueue(", "defer("];
        for (name, body) in BODIES {
            returns_only_after(name, body, &moves, "flush()", true);
            returns_only_after(name, body, &["audit("], "flush_audit(", false);
        }
    }

    /// The request event is appended before the first write of a run
    /// (`enqueue_one`), and flushed before it: a write failing half-way
    /// through the script leaves no run without its event.
    #[test]
    fn enqueue_writes_each_request_event_before_any_run() {
        let body = BODIES[0].1;
        let at = |needle: &str| body.find(needle).unwrap_or_else(|| panic!("enqueue.lua has no {needle:?}"));
        let main = at("\nlocal out, runs = {}, {}\n");
        let (appended, flushed, written) =
            (at("    audit(runs[i][13], runs[i][14])"), at("\nflush_audit("), at("out[i] = enqueue_one("));
        assert!(
            main < appended && appended < flushed && flushed < written,
            "enqueue.lua writes a run before its event"
        );
        let before: &str = &body[..main];
        for write in ["'HSET'", "'HDEL'", "'PEXPIRE'", "defer(", "count(", "enter_lane("] {
            let first = before.find(write).unwrap_or(usize::MAX);
            assert!(first > at("local function enqueue_one("), "{write} before the runs' events are written");
        }
    }

    /// Every `return` of `body` after a line calling one of `writes` (or
    /// one of the script's own `<verb>_one` functions) has a line starting
    /// with `flush` between them.
    fn returns_only_after(name: &str, body: &str, writes: &[&str], flush: &str, own_functions_write: bool) {
        let writes_at = |line: &str| !line.contains(flush) && writes.iter().any(|m| line.contains(m));
        if !body.lines().any(writes_at) {
            return;
        }
        // Returns inside a function of the script's own (`claim_one`,
        // ...) hand a value to its caller, not to Redis: skipped.
        assert!(
            !body.lines().any(|l| l.starts_with("local function ") && !l.contains("_one(")),
            "{name}.lua: a function of its own not named <verb>_one, which this check cannot follow"
        );
        let lines: Vec<&str> = body.lines().collect();
        let (mut unflushed, mut in_function) = (false, false);
        for (i, line) in lines.iter().enumerate() {
            if line.starts_with("local function ") {
                in_function = true;
            } else if *line == "end" && in_function {
                in_function = false;
            }
            // A function's body writes when it is called: the scripts'
            // own functions are `<verb>_one`.
            let calls_own = own_functions_write && !in_function && line.contains("_one(");
            assert!(
                own_functions_write || !(in_function && writes_at(line)),
                "{name}.lua line {}: cannot follow",
                i + 1
            );
            if calls_own || (!in_function && writes_at(line)) {
                unflushed = true;
            } else if line.trim().starts_with(flush) {
                unflushed = false;
            }
            if unflushed && !in_function && line.trim_start().starts_with("return ") {
                panic!("{name}.lua line {}: returns after writing without {flush}", i + 1);
            }
        }
    }
}
