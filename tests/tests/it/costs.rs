//! Cost reports: each run's record says what its model calls used and cost
//! at the provider's prices, and a tenant's report over days, grouped by
//! day, repository, requester or model, adds up to exactly the sum of its
//! run records, with the daily budget beside the day's spend.

use serde_json::{Value, json};

#[tokio::test]
async fn a_tenants_cost_report_is_the_sum_of_its_run_records() {
    let unique = ulid::Ulid::new().to_string().to_lowercase();
    let tenant = format!("costs{unique}");
    let provider = format!("c{unique}");
    let providers = tests::providers::EmulatedProviders::start().await;
    providers.script(&["```bash\necho noted > NOTE.md\n```", "Noted.\nPADDOCK_DONE"]);
    let prices = json!({"gpt-scripted": {"input_usd_per_mtok": 3.0, "output_usd_per_mtok": 15.0}});
    let configured =
        json!({provider.clone(): {"kind": "openai", "base_url": providers.base_url, "api_key": providers.key,
        "models": ["gpt-scripted"], "prices": prices}})
        .to_string();
    let allowed = json!([provider]).to_string();
    let owned = json!([format!("acme/costs-{unique}-*")]).to_string();
    let tenant_key = format!("PADDOCK_TENANTS__{}__REPOSITORIES", tenant.to_uppercase());
    let app = tests::spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__COMMAND", "PADDOCK_MODEL=gpt-scripted paddock-agent"),
        ("PADDOCK_GATEWAY__PROVIDERS", &configured),
        ("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", &allowed),
        ("PADDOCK_GATEWAY__TENANT_DAILY_COST_BUDGET_USD", "5"),
        (&tenant_key, &owned),
    ])
    .await;
    let worker = app.spawn_worker().await;
    let mut runs = Vec::new();
    for name in ["a", "b"] {
        let repo = app.repo_named(&format!("costs-{unique}-{name}"), &[("README.md", b"# Costs\n")]);
        let id = app.create_run(&repo, "Note it").await;
        runs.push(app.wait_for_success(&id).await.0);
    }
    worker.shutdown().await;
    providers.stop().await;

    // Each run: two calls of 40 tokens in and 10 out, at $3 and $15 per million.
    let mut sum = 0u64;
    for run in &runs {
        let usage = &run["facts"]["usage"];
        assert_eq!(usage, &json!({"tokens_in": 80, "tokens_out": 20, "cost_micro_usd": 540}), "{run:#}");
        assert_eq!(run["facts"]["models"][0]["usage"], *usage);
        sum += usage["cost_micro_usd"].as_u64().unwrap();
    }
    let app = &app;
    let tenant = tenant.as_str();
    let report = async |query: &str| {
        let response = app.get(&format!("/v1/tenants/{tenant}/costs?{query}")).await;
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    let (status, by_model) = report("group_by=model").await;
    assert_eq!(status, 200, "{by_model}");
    let total = &by_model["total"];
    assert_eq!((total["runs"].as_u64(), total["tokens_in"].as_u64()), (Some(2), Some(160)), "{by_model:#}");
    assert!((total["cost_usd"].as_f64().unwrap() - sum as f64 / 1e6).abs() < 1e-9, "{by_model:#}");
    let groups = by_model["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["key"], format!("{provider}/gpt-scripted"));
    assert_eq!(groups[0]["cost_usd"], total["cost_usd"]);
    let (_, by_repository) = report("group_by=repository").await;
    let repositories: Vec<&str> =
        by_repository["groups"].as_array().unwrap().iter().map(|g| g["key"].as_str().unwrap()).collect();
    assert_eq!(repositories.len(), 2, "{by_repository:#}");
    let (_, by_requester) = report("group_by=requester").await;
    assert_eq!(by_requester["groups"][0]["key"], "bootstrap-admin");
    assert_eq!(by_requester["groups"][0]["runs"], 2);
    // By day (the default): today, with the tenant's daily budget beside it.
    let (_, by_day) = report("").await;
    let today = by_day["groups"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(today["key"], by_day["until"]);
    assert_eq!((today["runs"].as_u64(), today["budget_usd"].as_f64()), (Some(2), Some(5.0)), "{by_day:#}");
    // Bad input names its field.
    let (status, problem) = report("group_by=colour").await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("group_by")), "{problem}");
    let (status, problem) = report("since=yesterday").await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("since")), "{problem}");
    // A span longer than a year is cut to one, and says so.
    let (status, long) = report("since=2000-01-01").await;
    assert_eq!(status, 200, "{long}");
    assert_ne!(long["since"], "2000-01-01");
    assert_eq!(long["total"], by_day["total"]);
}
