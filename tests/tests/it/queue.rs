//! The queue scripts on their own: leases, fencing, reaping, retries.

use std::time::Duration;

use common::{Priority, RunId, RunSpec, RunState, StopReason};
use store::{LeaseStatus, Outcome, RunQueue};
use tests::fixtures::{enqueue, fresh_queue, run_spec};

async fn queue() -> RunQueue {
    fresh_queue(None, false).await
}

fn spec(tenant: &str, repo: &str) -> RunSpec {
    run_spec(tenant, repo, Priority::Normal)
}

fn done() -> Outcome {
    Outcome::Done { reason: StopReason::Completed, artifacts: vec![], facts: None }
}

#[tokio::test]
async fn an_expired_lease_is_reaped_and_the_old_holder_is_fenced_off() {
    let q = queue().await;
    let id = RunId::new();
    enqueue(&q, id, &spec("t", "a/b"), 3, None).await.unwrap();
    let first = q.claim("w1", Duration::from_millis(300)).await.unwrap().unwrap();
    assert_eq!((first.id, first.attempt, first.epoch), (id, 1, 1));
    assert!(q.claim("w2", Duration::from_secs(30)).await.unwrap().is_none(), "a leased run was handed out twice");
    assert_eq!(q.heartbeat("w1", Duration::from_millis(300), &[(id, 1)]).await.unwrap(), vec![LeaseStatus::Held]);

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(q.reap(100).await.unwrap(), vec![id]);
    assert_eq!(q.reap(100).await.unwrap(), vec![], "reaping twice reclaimed twice");
    assert_eq!(q.get(id).await.unwrap().unwrap().state, RunState::Queued);

    let second = q.claim("w2", Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!((second.attempt, second.epoch), (2, 3), "the crash counts as an attempt; the epoch fences");
    assert_eq!(q.heartbeat("w1", Duration::from_secs(30), &[(id, 1)]).await.unwrap(), vec![LeaseStatus::Lost]);
    assert_eq!(q.finish(&first, &done()).await.unwrap(), None, "a fenced-off worker finished the run");
    assert_eq!(q.finish(&second, &done()).await.unwrap(), Some(RunState::Succeeded));
    let record = q.get(id).await.unwrap().unwrap();
    assert_eq!((record.state, record.attempt, record.worker.as_deref()), (RunState::Succeeded, 2, Some("w2")));
    assert!(record.last_error.unwrap().contains("w1"));
}

#[tokio::test]
async fn infrastructure_retries_back_off_and_stop_at_the_attempt_limit() {
    let q = queue().await;
    let id = RunId::new();
    enqueue(&q, id, &spec("t", "a/b"), 2, None).await.unwrap();
    let reason = StopReason::InfrastructureError { message: "docker went away".to_owned() };
    let retry = Outcome::Retry { reason: reason.clone(), delay: Duration::from_millis(300) };
    let run = q.claim("w", Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!(q.finish(&run, &retry).await.unwrap(), Some(RunState::Delayed));
    assert!(q.claim("w", Duration::from_secs(30)).await.unwrap().is_none(), "claimed before the backoff ended");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let run = q.claim("w", Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!(run.attempt, 2);
    assert_eq!(q.finish(&run, &retry).await.unwrap(), Some(RunState::Failed));
    let record = q.get(id).await.unwrap().unwrap();
    assert_eq!(record.stop_reason, Some(reason));
}

#[tokio::test]
async fn a_released_run_keeps_its_place_and_its_attempt_count() {
    let q = queue().await;
    let (a, b) = (RunId::new(), RunId::new());
    enqueue(&q, a, &spec("t", "a/b"), 3, None).await.unwrap();
    enqueue(&q, b, &spec("t", "a/b"), 3, None).await.unwrap();
    let run = q.claim("w", Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!(run.id, a);
    assert_eq!(q.finish(&run, &Outcome::Release).await.unwrap(), Some(RunState::Queued));
    let again = q.claim("w", Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempt), (a, 1), "release must not count an attempt or lose FIFO order");
}

#[tokio::test]
async fn tenants_take_turns_and_each_repository_is_fifo() {
    let q = queue().await;
    let mut expected = Vec::new();
    let big: Vec<RunId> = (0..4).map(|_| RunId::new()).collect();
    for id in &big {
        enqueue(&q, *id, &spec("big", "big/repo"), 3, None).await.unwrap();
    }
    let small = RunId::new();
    enqueue(&q, small, &spec("small", "small/repo"), 3, None).await.unwrap();
    expected.push(big[0]);
    expected.push(small);
    expected.extend(&big[1..]);
    let mut order = Vec::new();
    while let Some(run) = q.claim("w", Duration::from_secs(30)).await.unwrap() {
        order.push(run.id);
    }
    assert_eq!(order, expected, "a burst from one tenant starved another");
    let depth = q.depth().await.unwrap();
    assert_eq!(depth.totals["running"], 5);
    assert_eq!(depth.totals["queued"], 0);
    assert_eq!(depth.tenants["big"]["running"], 4);
}

#[tokio::test]
async fn each_priority_band_counts_its_runs_by_state_and_tenant() {
    let q = queue().await;
    let band = |p| run_spec("t", "a/b", p);
    for priority in [Priority::High, Priority::High, Priority::Low] {
        enqueue(&q, RunId::new(), &band(priority), 3, None).await.unwrap();
    }
    let low = RunId::new();
    enqueue(&q, low, &run_spec("u", "c/d", Priority::Low), 3, None).await.unwrap();
    // The high band is served first; the other tenant's low run is cancelled.
    let first = q.claim("w", Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!(first.spec.priority, Priority::High);
    q.cancel(low, "someone").await.unwrap();
    let depth = q.depth().await.unwrap();
    let count = |band: &str, tenant: &str, state: &str| {
        depth.bands.get(&(band.to_owned(), tenant.to_owned())).and_then(|s| s.get(state)).copied().unwrap_or(0)
    };
    assert_eq!((count("high", "t", "running"), count("high", "t", "queued")), (1, 1), "{:?}", depth.bands);
    assert_eq!((count("low", "t", "queued"), count("low", "u", "queued"), count("low", "u", "cancelled")), (1, 0, 1));
    assert_eq!(q.finish(&first, &done()).await.unwrap(), Some(RunState::Succeeded));
    let depth = q.depth().await.unwrap();
    let states = &depth.bands[&("high".to_owned(), "t".to_owned())];
    assert_eq!((states["running"], states["succeeded"], states["queued"]), (0, 1, 1));
    // Every band's counts add up to the totals.
    let add_up = |depth: &store::Depth| {
        for state in ["queued", "running", "succeeded", "cancelled"] {
            let in_bands: i64 =
                depth.bands.iter().filter(|((_, t), _)| t != "*").filter_map(|(_, s)| s.get(state)).sum();
            assert_eq!(in_bands, depth.totals.get(state).copied().unwrap_or(0), "{state}");
        }
        let dispatchable: i64 =
            depth.bands.iter().filter(|((_, t), _)| t == "*").filter_map(|(_, s)| s.get("dispatchable")).sum();
        assert_eq!(dispatchable, depth.totals.get("dispatchable").copied().unwrap_or(0), "{:?}", depth.bands);
    };
    add_up(&depth);
    let dispatchable = |depth: &store::Depth, band: &str, tenant: &str| {
        depth.bands.get(&(band.to_owned(), tenant.to_owned())).and_then(|s| s.get("dispatchable")).copied()
    };
    assert_eq!(dispatchable(&depth, "low", "t"), Some(1));
    // At its cap, the repository's queued runs are not dispatchable in any
    // band; under it again, they are.
    q.set_repo_limit("t", "a/b", Some(1)).await.unwrap();
    let second = q.claim("w", Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!(second.spec.priority, Priority::High);
    let capped = q.depth().await.unwrap();
    add_up(&capped);
    assert_eq!((dispatchable(&capped, "low", "t"), dispatchable(&capped, "low", "*")), (Some(0), Some(0)));
    assert_eq!(capped.bands[&("low".to_owned(), "t".to_owned())]["queued"], 1, "still queued, only held back");
    q.set_repo_limit("t", "a/b", None).await.unwrap();
    let open = q.depth().await.unwrap();
    add_up(&open);
    assert_eq!((dispatchable(&open, "low", "t"), dispatchable(&open, "low", "*")), (Some(1), Some(1)));
}

/// A model call reserved just before midnight (UTC) and settled after it
/// releases its reservation from the day it was made on: settling follows
/// the day the reservation names, not the clock.
#[tokio::test]
async fn a_budget_reservation_is_settled_on_the_day_it_was_made() {
    use store::Spend;
    let q = queue().await;
    let (run, tenant) = (RunId::new(), "acme");
    let worst = Spend { tokens: 1000, micro_usd: 5000 };
    let limit = Spend { tokens: 1_000_000, micro_usd: 1_000_000 };
    let reservation = store::Reservation { run, tenant, amount: worst, run_limit: limit, tenant_limit: limit };
    let admitted = q.admit(&[], Some(&reservation)).await.unwrap();
    let store::Admission::Admitted { day: today } = admitted else { panic!("the budget covers it: {admitted:?}") };
    let now_day = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 86400;
    assert!(today.abs_diff(now_day) <= 1, "the day is a UTC day number: {today}");
    assert_eq!(q.tenant_day_spend(tenant, today).await.unwrap(), (Spend::default(), worst));

    // What "yesterday's" call books lands on yesterday, and leaves today's
    // reservation alone.
    let used = Spend { tokens: 300, micro_usd: 900 };
    q.settle_budget(run, tenant, today - 1, Spend::default(), used).await.unwrap();
    assert_eq!(q.tenant_day_spend(tenant, today - 1).await.unwrap(), (used, Spend::default()));
    assert_eq!(q.tenant_day_spend(tenant, today).await.unwrap(), (Spend::default(), worst));

    // Today's call settles today's reservation exactly.
    q.settle_budget(run, tenant, today, worst, used).await.unwrap();
    assert_eq!(q.tenant_day_spend(tenant, today).await.unwrap(), (used, Spend::default()));
    let (run_used, run_reserved) = q.run_spend(run).await.unwrap();
    assert_eq!((run_used.tokens, run_reserved), (600, Spend::default()));
}

/// A call is admitted by every shared rate and budget at once, or takes
/// nothing from any: one refusing leaves the others' allowance whole.
#[tokio::test]
async fn a_call_refused_by_one_limit_takes_nothing_from_the_others() {
    use store::{Admission, Rate, Reservation, Spend};
    let q = queue().await;
    let rate = |name: &str, per_minute: u64| Rate { name: name.to_owned(), per_minute, cells: 1 };
    let (tenant, provider) = (rate("tenant:acme", 2), rate("provider:p", 1));
    let both = [tenant.clone(), provider.clone()];
    // The UTC day the script reads off Redis's clock (a run across
    // midnight reads the next one).
    let Admission::Admitted { day: today } = q.admit(&[], None).await.unwrap() else { panic!("nothing to refuse") };
    let now_day = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 86400;
    assert!(today.abs_diff(now_day) <= 1, "{today}");
    assert_eq!(q.admit(&both, None).await.unwrap(), Admission::Admitted { day: today });
    let Admission::RateLimited { index, wait } = q.admit(&both, None).await.unwrap() else {
        panic!("the provider's one call a minute is taken")
    };
    assert_eq!(index, 1, "the provider's rate refused");
    assert!(wait > std::time::Duration::from_secs(30) && wait <= std::time::Duration::from_secs(60), "{wait:?}");
    // The refused call took none of the tenant's two: one is left.
    assert_eq!(q.admit(std::slice::from_ref(&tenant), None).await.unwrap(), Admission::Admitted { day: today });
    assert!(matches!(
        q.admit(std::slice::from_ref(&tenant), None).await.unwrap(),
        Admission::RateLimited { index: 0, .. }
    ));

    // Over a budget: the rate's one cell is not taken either.
    let (run, lonely) = (RunId::new(), rate("tenant:solo", 1));
    let amount = Spend { tokens: 500, micro_usd: 0 };
    let limit = Spend { tokens: 100, micro_usd: 0 };
    let reservation = Reservation { run, tenant: "solo", amount, run_limit: limit, tenant_limit: Spend::default() };
    let refused = q.admit(std::slice::from_ref(&lonely), Some(&reservation)).await.unwrap();
    assert_eq!(refused, Admission::OverBudget("run".to_owned()));
    assert_eq!(q.run_spend(run).await.unwrap(), (Spend::default(), Spend::default()), "nothing reserved");
    assert_eq!(q.admit(std::slice::from_ref(&lonely), None).await.unwrap(), Admission::Admitted { day: today });

    // Given back, a token rate's cells can be taken again.
    let tokens = Rate { name: "tokens:tenant:acme".to_owned(), per_minute: 1000, cells: 1000 };
    assert!(matches!(q.admit(std::slice::from_ref(&tokens), None).await.unwrap(), Admission::Admitted { .. }));
    assert!(matches!(q.admit(std::slice::from_ref(&tokens), None).await.unwrap(), Admission::RateLimited { .. }));
    q.rate_refund(&[Rate { cells: 600, ..tokens.clone() }]).await.unwrap();
    let some = Rate { cells: 500, ..tokens };
    assert!(matches!(q.admit(std::slice::from_ref(&some), None).await.unwrap(), Admission::Admitted { .. }));
}

/// A queue entry whose run is no longer queued (an index left behind) is
/// dropped by the claim without charging its tenant's fair share.
#[tokio::test]
async fn a_stale_queue_entry_does_not_charge_its_tenant() {
    let q = queue().await;
    let stale = RunId::new();
    enqueue(&q, stale, &spec("t", "a/r"), 3, None).await.unwrap();
    let namespace = q.namespace().to_owned();
    let redis = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli").args(["-p", "6390"]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // Its record says it is no longer queued; the queue entry remains.
    redis(&["HSET", &format!("{{{namespace}}}:job:{stale}"), "state", "cancelled"]);
    assert!(q.claim("w", Duration::from_secs(60)).await.unwrap().is_none());
    // Kept when the tenant left the ready index: still nothing charged.
    let vtime = redis(&["HGET", &format!("{{{namespace}}}:vtime"), "normal:t"]);
    assert_eq!(vtime.parse::<f64>().unwrap_or(0.0), 0.0, "the tenant was charged");
    let next = RunId::new();
    enqueue(&q, next, &spec("t", "a/r"), 3, None).await.unwrap();
    assert_eq!(q.claim("w", Duration::from_secs(60)).await.unwrap().map(|r| r.id), Some(next));
    assert_eq!(redis(&["HGET", &format!("{{{namespace}}}:vtime"), "normal:t"]), "1");
}

/// A follow-up of pull request `number` of `a/b`.
fn follow_up(number: u64) -> RunSpec {
    let branch = format!("paddock/1-pr{number}");
    RunSpec {
        base_ref: branch.clone(),
        follow_up: Some(common::FollowUp {
            pull_request: number,
            branch,
            base: "main".to_owned(),
            head_sha: "0".repeat(40),
            trigger: "issue_comment:1".to_owned(),
            requested_by_login: "alice".to_owned(),
            answer_review_comments: Vec::new(),
        }),
        ..spec("t", "a/b")
    }
}

async fn enqueue_state(q: &RunQueue, spec: &RunSpec) -> (RunId, RunState) {
    let id = RunId::new();
    match enqueue(q, id, spec, 3, None).await.unwrap() {
        store::Enqueued::Created { state, .. } => (id, state),
        other => panic!("{other:?}"),
    }
}

async fn state_of(q: &RunQueue, id: RunId) -> (RunState, Option<StopReason>) {
    let record = q.get(id).await.unwrap().unwrap();
    (record.state, record.stop_reason)
}

#[tokio::test]
async fn runs_of_one_pull_request_wait_in_its_lane_and_the_newest_trigger_supersedes_one_not_started() {
    let q = queue().await;
    let superseded = |by: RunId| Some(StopReason::Superseded { by: by.to_string() });
    // Not started yet: a newer trigger replaces it outright.
    let (a, state) = enqueue_state(&q, &follow_up(7)).await;
    assert_eq!(state, RunState::Queued);
    let (b, _) = enqueue_state(&q, &follow_up(7)).await;
    assert_eq!(state_of(&q, a).await, (RunState::Cancelled, superseded(b)));
    let running = q.claim("w", Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!(running.id, b);
    // Behind a running one it waits; the next trigger replaces the waiting one.
    let (c, state) = enqueue_state(&q, &follow_up(7)).await;
    assert_eq!(state, RunState::Waiting);
    let (d, _) = enqueue_state(&q, &follow_up(7)).await;
    assert_eq!(state_of(&q, c).await, (RunState::Cancelled, superseded(d)));
    // Another pull request, and a run on no pull request, are not held up.
    let (other, state) = enqueue_state(&q, &follow_up(8)).await;
    assert_eq!(state, RunState::Queued);
    let plain = RunId::new();
    enqueue(&q, plain, &spec("t", "a/b"), 3, None).await.unwrap();
    let mut claimed = Vec::new();
    while let Some(run) = q.claim("w", Duration::from_secs(30)).await.unwrap() {
        claimed.push(run.id);
    }
    assert_eq!(claimed, vec![other, plain], "the waiting follow-up was handed out beside the running one");
    // A waiting run can be cancelled; the next trigger then waits alone.
    assert_eq!(q.cancel(d, "alice@example.com").await.unwrap().unwrap().0, RunState::Cancelled);
    let (e, state) = enqueue_state(&q, &follow_up(7)).await;
    assert_eq!(state, RunState::Waiting);
    // A retried attempt keeps the lane; only the end of the run opens it.
    let retry =
        Outcome::Retry { reason: StopReason::InfrastructureError { message: "docker".into() }, delay: Duration::ZERO };
    assert_eq!(q.finish(&running, &retry).await.unwrap(), Some(RunState::Delayed));
    assert_eq!(state_of(&q, e).await.0, RunState::Waiting);
    let again = q.claim("w", Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!(again.id, b);
    assert_eq!(q.finish(&again, &done()).await.unwrap(), Some(RunState::Succeeded));
    assert_eq!(state_of(&q, e).await.0, RunState::Queued);
    // A run whose worker died keeps its lane through the reaper.
    let short = q.claim("w", Duration::from_millis(100)).await.unwrap().unwrap();
    assert_eq!(short.id, e);
    let (f, state) = enqueue_state(&q, &follow_up(7)).await;
    assert_eq!(state, RunState::Waiting);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(q.reap(10).await.unwrap(), vec![e]);
    assert_eq!(state_of(&q, f).await.0, RunState::Waiting);
    let retried = q.claim("w", Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!((retried.id, retried.attempt), (e, 2));
    assert_eq!(q.finish(&retried, &done()).await.unwrap(), Some(RunState::Succeeded));
    assert_eq!(q.claim("w", Duration::from_secs(30)).await.unwrap().unwrap().id, f);
}

/// The same mix of tenants, weights, repositories, bands and a cap, into `q`.
async fn mixed_backlog(q: &RunQueue) {
    q.set_tenant_limits("heavy", None, Some(3.0)).await.unwrap();
    q.set_repo_limit("light", "l/capped", Some(2)).await.unwrap();
    for i in 0..40 {
        let (tenant, repo) = match i % 4 {
            0 | 1 => ("heavy", format!("h/r{}", i % 3)),
            2 => ("light", "l/capped".to_owned()),
            _ => ("light", format!("l/r{}", i % 2)),
        };
        let band = if i % 7 == 0 { Priority::High } else { Priority::Normal };
        let mut spec = run_spec(tenant, &repo, band);
        spec.task_title = format!("run {i}");
        enqueue(q, RunId::new(), &spec, 3, None).await.unwrap();
    }
}

#[tokio::test]
async fn one_call_claiming_n_runs_takes_what_n_claims_would() {
    let (one_by_one, batched) = (queue().await, queue().await);
    mixed_backlog(&one_by_one).await;
    mixed_backlog(&batched).await;
    let lease = Duration::from_secs(60);
    let mut expected = Vec::new();
    while let Some(run) = one_by_one.claim("w", lease).await.unwrap() {
        expected.push(run.spec.task_title);
    }
    let mut got = Vec::new();
    for n in [1, 7, 10, 7, 20] {
        got.extend(batched.claim_many("w", lease, n).await.unwrap().into_iter().map(|r| r.spec.task_title));
    }
    // 40 runs, 10 of them in a repository capped at 2 running.
    assert_eq!(expected.len(), 32, "{expected:?}");
    assert_eq!(got, expected);
    assert_eq!(one_by_one.depth().await.unwrap(), batched.depth().await.unwrap());
}

#[tokio::test]
async fn runs_accepted_and_finished_at_once_each_get_their_own_answer() {
    let q = queue().await;
    let key = |n: usize| store::Idempotency {
        key: format!("user:p:k{}", n % 50),
        fingerprint: format!("f{}", n % 50),
        ttl: Duration::from_secs(60),
    };
    // 200 requests at once, every key used four times: one run per key.
    let answers = futures::future::join_all((0..200).map(|n| {
        let q = q.clone();
        async move {
            let id = RunId::new();
            (id, enqueue(&q, id, &spec("t", &format!("a/r{}", n % 9)), 3, Some(&key(n))).await.unwrap())
        }
    }))
    .await;
    let created: Vec<RunId> =
        answers.iter().filter(|(_, a)| matches!(a, store::Enqueued::Created { .. })).map(|(id, _)| *id).collect();
    assert_eq!(created.len(), 50);
    for (_, answer) in &answers {
        if let store::Enqueued::Existing { id, same_request } = answer {
            assert!(created.contains(id) && *same_request, "{answer:?}");
        }
    }
    let claimed = q.claim_many("w", Duration::from_secs(60), 50).await.unwrap();
    assert_eq!(claimed.len(), 50);
    let done = done();
    let states = futures::future::join_all(claimed.iter().map(|run| q.finish(run, &done))).await;
    assert!(states.into_iter().all(|s| s.unwrap() == Some(RunState::Succeeded)));
    // Finishing again: every lease is gone, each caller told so.
    let again = futures::future::join_all(claimed.iter().map(|run| q.finish(run, &done))).await;
    assert!(again.into_iter().all(|s| s.unwrap().is_none()));
    let depth = q.depth().await.unwrap();
    assert_eq!((depth.totals["succeeded"], depth.totals["queued"], depth.totals["running"]), (50, 0, 0));
}

#[tokio::test]
async fn a_cap_set_while_runs_are_running_counts_them() {
    let q = queue().await;
    let lease = Duration::from_secs(60);
    for n in 0..6 {
        enqueue(&q, RunId::new(), &spec("t", &format!("a/r{}", n % 2)), 3, None).await.unwrap();
    }
    let running = q.claim_many("w", lease, 3).await.unwrap();
    assert_eq!(running.len(), 3);
    // Three hold slots already: a cap of 2 leaves nothing to claim until
    // two of them end.
    q.set_tenant_limits("t", Some(2), None).await.unwrap();
    assert!(q.claim("w", lease).await.unwrap().is_none(), "the running runs were not counted");
    assert_eq!(q.finish(&running[0], &done()).await.unwrap(), Some(RunState::Succeeded));
    assert!(q.claim("w", lease).await.unwrap().is_none(), "two still hold the two slots");
    assert_eq!(q.finish(&running[1], &done()).await.unwrap(), Some(RunState::Succeeded));
    let next = q.claim_many("w", lease, 3).await.unwrap();
    assert_eq!(next.len(), 1, "one slot free under the cap");
    // A repository cap the same way: a/r0 and a/r1 each hold one now.
    q.set_tenant_limits("t", None, None).await.unwrap();
    let repo = next[0].spec.repository.to_string();
    q.set_repo_limit("t", &repo, Some(1)).await.unwrap();
    let more = q.claim_many("w", lease, 5).await.unwrap();
    assert!(more.iter().all(|r| r.spec.repository.to_string() != repo), "{repo} is at its cap: {more:?}");
}

#[tokio::test]
async fn the_server_is_checked_at_start_and_a_user_without_info_still_starts() {
    assert!(queue().await.check_server().await.is_ok(), "this machine's Redis is 6.2 or newer");
    // A user whose ACL allows everything but INFO, as a locked-down managed
    // Redis may give: the version cannot be read, reachability can.
    let user = format!("paddock-noinfo-{}", ulid::Ulid::new());
    let acl = |args: &[&str]| std::process::Command::new("redis-cli").args(["-p", "6390", "ACL"]).args(args).output();
    acl(&["SETUSER", &user, "on", "nopass", "~*", "&*", "+@all", "-info"]).unwrap();
    let q = fresh_queue(Some(&format!("redis://{user}:x@127.0.0.1:6390/")), false).await;
    let info = std::process::Command::new("redis-cli")
        .args(["-p", "6390", "--user", &user, "--pass", "x", "--no-auth-warning", "INFO", "server"])
        .output()
        .unwrap();
    let refused = String::from_utf8_lossy(&info.stdout).contains("NOPERM");
    assert!(refused, "the ACL let INFO through");
    let checked = q.check_server().await;
    acl(&["DELUSER", &user]).unwrap();
    assert!(checked.is_ok(), "{checked:?}");
}

/// The standalone gateway looks a call's token up and counts the call in
/// flight for the run's worker in one round trip; an unknown token counts
/// nothing, and a call refused after it was counted is taken down again.
#[tokio::test]
async fn a_standalone_gateway_call_is_looked_up_and_counted_in_one_round_trip() {
    let q = queue().await;
    let run = RunId::new();
    let grant = store::GatewayGrant { run, tenant: "acme".to_owned(), trace_parent: None };
    let open = {
        let key = format!("{{{}}}:gwcalls:open:{run}", q.namespace());
        move || {
            let out = std::process::Command::new("redis-cli").args(["-p", "6390", "GET", &key]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
    };
    assert_eq!(q.open_gateway_call("no-such-token").await.unwrap(), None);
    q.put_gateway_token("token-hash", &grant, std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(q.open_gateway_call("no-such-token").await.unwrap(), None);
    assert_eq!(open(), "", "an unknown token counted a call");
    assert_eq!(q.open_gateway_call("token-hash").await.unwrap(), Some(grant.clone()));
    assert_eq!(q.open_gateway_call("token-hash").await.unwrap(), Some(grant));
    assert_eq!(open(), "2");
    q.gateway_call_dropped(run).await.unwrap();
    q.gateway_call_finished(run, "{}").await.unwrap();
    assert_eq!(open(), "0");
    assert_eq!(q.take_gateway_calls(run, std::time::Duration::from_secs(5)).await.unwrap(), vec!["{}".to_owned()]);
}
