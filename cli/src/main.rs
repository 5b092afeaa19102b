//! `paddock`: everyday work with a Paddock deployment from a shell, through
//! its REST API only (a base URL and a bearer token). Every command takes
//! `--output json`; exit codes are stable (see [`client::Exit`] and
//! `paddock --help`).

mod audit;
mod client;
mod config;
mod show;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};

use client::{Api, Exit, Failure, Result, segment};

const EXIT_CODES: &str = "\
Exit codes:
  0  done, and the answer is yes (a watched run succeeded, a bundle verified)
  1  done, and the answer is no (the run failed or was cancelled; verification found problems)
  2  usage or configuration error
  3  the API refused the token or its permissions (401, 403)
  4  not found (404)
  5  the API refused the request (400, 409, 413, 422)
  6  Paddock unreachable or unavailable (connection, timeout, 429, 5xx): retry later";

#[derive(Parser)]
#[command(name = "paddock", version, about = "Run coding agents on your issues with Paddock, from a shell", after_help = EXIT_CODES)]
struct Cli {
    /// The Paddock API's base URL.
    #[arg(long, env = "PADDOCK_API_URL", global = true)]
    api_url: Option<String>,
    /// A bearer token (a service-account token or an identity provider's
    /// token); else $PADDOCK_TOKEN. Prefer --token-file: a flag is visible
    /// to other users.
    #[arg(long, global = true)]
    token: Option<String>,
    /// A file holding the token; else $PADDOCK_TOKEN_FILE. Either flag
    /// beats both variables.
    #[arg(long, global = true, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// PEM CA certificates to trust beside the system's (an internal CA).
    #[arg(long, env = "PADDOCK_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// The CLI's config file (TOML: api_url, token_file, token, ca_file);
    /// default ~/.config/paddock/cli.toml when it exists.
    #[arg(long, env = "PADDOCK_CLI_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// How answers are printed: text for people, json for scripts.
    #[arg(long, short, env = "PADDOCK_OUTPUT", global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Submit a run: an agent works on a task in a repository and opens a
    /// draft pull request. Prints the run's id (or, with --watch, its log).
    Run(RunArgs),
    /// Show a run: state, why it stopped, its pull request and cost.
    Status { id: String },
    /// List runs, newest first.
    List {
        /// Only runs in this state.
        #[arg(long, value_parser = ["awaiting_approval", "waiting", "queued", "delayed", "running", "cancelling", "succeeded", "failed", "cancelled"])]
        state: Option<String>,
        /// At most this many (pages are followed).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Print a run's log; with -f, follow it live until the run ends.
    Logs {
        id: String,
        /// Follow the live log (exit code as for `run --watch`).
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a run (a running one's sandbox is stopped).
    Cancel { id: String },
    /// Approve a run whose policy asks for a second person.
    Approve { id: String },
    /// A run's evidence record: who asked, what ran, where its artifacts are.
    Record { id: String },
    /// A tenant's model spend, with its daily budgets beside it.
    Cost {
        /// The tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// First UTC day (YYYY-MM-DD; default 29 days before --until).
        #[arg(long)]
        since: Option<String>,
        /// Last UTC day (YYYY-MM-DD; default today).
        #[arg(long)]
        until: Option<String>,
        #[arg(long, value_parser = ["day", "repository", "requester", "model"], default_value = "day")]
        group_by: String,
    },
    /// Queue depth: queued, dispatchable, running, per tenant.
    Queue,
    /// The audit trail: verify it, export it, check an export offline.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

#[derive(Args)]
struct RunArgs {
    /// `owner/name` of the repository.
    #[arg(long, short)]
    repo: String,
    /// One line, like an issue title.
    #[arg(long, short)]
    title: String,
    /// Details, like an issue body (Markdown).
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// Read the details from a file (`-` for stdin).
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Branch or tag the agent starts from.
    #[arg(long, default_value = "main")]
    base: String,
    /// The tenant the run belongs to (default: the repository's).
    #[arg(long)]
    tenant: Option<String>,
    /// The agent profile configured on the workers.
    #[arg(long)]
    profile: Option<String>,
    /// The issue the task comes from (the pull request links it).
    #[arg(long)]
    issue: Option<u64>,
    #[arg(long, value_parser = ["high", "normal", "low"])]
    priority: Option<String>,
    /// The person a service account asks for (required from service accounts).
    #[arg(long)]
    on_behalf_of: Option<String>,
    /// Follow the run's live log until it ends; exit 0 only if it succeeded.
    #[arg(long, short)]
    watch: bool,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the whole trail (or a time range) where it is stored.
    Verify {
        #[arg(long)]
        since_ms: Option<u64>,
        #[arg(long)]
        until_ms: Option<u64>,
    },
    /// Export the events of a time range or a run, download the bundle and
    /// verify it offline.
    Export {
        #[arg(long)]
        since_ms: Option<u64>,
        #[arg(long)]
        until_ms: Option<u64>,
        /// Only the events about this run.
        #[arg(long)]
        run: Option<String>,
        /// The folder the bundle's folder is made in (default: here).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Trust only these Ed25519 public keys (base64); default the key
        /// the deployment names in /v1/audit/status.
        #[arg(long = "public-key")]
        public_keys: Vec<String>,
    },
    /// Verify a downloaded bundle folder from its files alone (no API).
    VerifyExport {
        folder: PathBuf,
        /// The Ed25519 public keys (base64) to trust; at least one.
        #[arg(long = "public-key", required = true)]
        public_keys: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { Exit::Usage as u8 } else { Exit::Ok as u8 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("paddock: cannot start: {error}");
            return ExitCode::from(Exit::Unavailable as u8);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(failure) => {
            eprintln!("paddock: {failure}");
            ExitCode::from(failure.exit as u8)
        }
    }
}

/// The API, from the flags, the environment and the config file.
fn connect(cli: &Cli) -> Result<Api> {
    let (token, token_file) = config::Given::token_from(cli.token.as_deref(), cli.token_file.as_deref());
    let given = config::Given {
        config: cli.config.as_deref(),
        api_url: cli.api_url.as_deref(),
        token,
        token_file,
        ca_file: cli.ca_file.as_deref(),
    };
    let settings = config::resolve(&given)?;
    let tls = common::config::TlsConfig { extra_ca_files: settings.ca_file.into_iter().collect() };
    let outbound = platform::outbound::Outbound::new(&tls, &common::config::OutboundConfig::default())
        .map_err(|e| Failure::usage(e.to_string().replace("tls.extra_ca_files", "ca_file")))?;
    let http = outbound
        .http()
        .user_agent(concat!("paddock-cli/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(10))
        // A silent API or a half-open stream ends (exit 6); the live log
        // sends something at least every 15 s.
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| Failure::usage(format!("cannot build the HTTP client: {e}")))?;
    Ok(Api::new(&settings.api_url, settings.token, http))
}

async fn dispatch(cli: Cli) -> Result<Exit> {
    let json = cli.output == Output::Json;
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "paddock", &mut std::io::stdout());
            return Ok(Exit::Ok);
        }
        Command::Audit(AuditCommand::VerifyExport { folder, public_keys }) => {
            let keys = audit::parse_keys(public_keys)?;
            let report = audit::verify_folder(folder, &keys).await?;
            show::verify_report(&report, json);
            return Ok(if report.ok() { Exit::Ok } else { Exit::No });
        }
        _ => {}
    }
    let api = connect(&cli)?;
    let run_path = |id: &str| segment("run", id).map(|id| format!("/v1/runs/{id}"));
    match cli.command {
        Command::Run(args) => submit(&api, args, json).await,
        Command::Status { id } => {
            let run = api.get(&run_path(&id)?).await?;
            show::value_or(&run, json, show::run);
            Ok(Exit::Ok)
        }
        Command::List { state, limit } => {
            let runs = list(&api, state.as_deref(), limit).await?;
            show::value_or(&Value::Array(runs), json, show::run_table);
            Ok(Exit::Ok)
        }
        Command::Logs { id, follow: false } => {
            let path = format!("{}/logs", run_path(&id)?);
            let response = api.send(&Method::GET, &path, api.request(Method::GET, &path)).await?;
            let text = response.text().await.map_err(|e| client::unreachable(&path, &e))?;
            if json {
                println!("{}", json!({"run": id, "log": text}));
            } else {
                print!("{text}");
            }
            Ok(Exit::Ok)
        }
        Command::Logs { id, follow: true } => {
            let end = watch::follow(&api, &id, watch::Show { json, progress: !json }).await?;
            let run = api.get(&run_path(&id)?).await?;
            ended(&run, &end, json)
        }
        Command::Cancel { id } => {
            let answer = api.post(&format!("{}/cancel", run_path(&id)?), None).await?;
            show::value_or(&answer, json, |a| println!("run {id}: {}", a["state"].as_str().unwrap_or("?")));
            Ok(Exit::Ok)
        }
        Command::Approve { id } => {
            let answer = api.post(&format!("{}/approve", run_path(&id)?), None).await?;
            show::value_or(&answer, json, |a| println!("run {id}: {}", a["state"].as_str().unwrap_or("approved")));
            Ok(Exit::Ok)
        }
        Command::Record { id } => {
            let record = api.get(&format!("{}/record", run_path(&id)?)).await?;
            println!("{}", serde_json::to_string_pretty(&record).unwrap_or_default());
            Ok(Exit::Ok)
        }
        Command::Cost { tenant, since, until, group_by } => {
            let mut query = vec![("group_by", group_by)];
            query.extend(since.map(|s| ("since", s)));
            query.extend(until.map(|u| ("until", u)));
            let path = format!("/v1/tenants/{}/costs", segment("tenant", &tenant)?);
            let report = api.get_with(&path, &query).await?;
            show::value_or(&report, json, show::costs);
            Ok(Exit::Ok)
        }
        Command::Queue => {
            let queue = api.get("/v1/queue").await?;
            show::value_or(&queue, json, show::queue);
            Ok(Exit::Ok)
        }
        Command::Audit(AuditCommand::Verify { since_ms, until_ms }) => {
            let mut query = Vec::new();
            query.extend(since_ms.map(|v| ("since_ms", v.to_string())));
            query.extend(until_ms.map(|v| ("until_ms", v.to_string())));
            let answer = api.get_with("/v1/audit/verify", &query).await?;
            let report: audit_trail::VerifyReport = serde_json::from_value(answer).map_err(|e| {
                Failure::new(Exit::Unavailable, format!("GET /v1/audit/verify: not a verification report: {e}"))
            })?;
            show::verify_report(&report, json);
            Ok(if report.ok() { Exit::Ok } else { Exit::No })
        }
        Command::Audit(AuditCommand::Export { since_ms, until_ms, run, out, public_keys }) => {
            let args = audit::ExportArgs { since_ms, until_ms, run, out, public_keys };
            let (job, folder, report) = audit::export(&api, args).await?;
            if json {
                println!("{}", json!({"export": job, "folder": folder, "verification": report}));
            } else {
                eprintln!("paddock: export {} downloaded to {}", job["id"].as_str().unwrap_or("?"), folder.display());
                show::verify_report(&report, false);
            }
            Ok(if report.ok() { Exit::Ok } else { Exit::No })
        }
        // Answered above, without the API.
        Command::Audit(AuditCommand::VerifyExport { .. }) | Command::Completions { .. } => Ok(Exit::Ok),
    }
}

async fn submit(api: &Api, args: RunArgs, json: bool) -> Result<Exit> {
    let body = match (&args.body, &args.body_file) {
        (Some(body), _) => body.clone(),
        (None, Some(path)) if path.as_os_str() == "-" => std::io::read_to_string(std::io::stdin())
            .map_err(|e| Failure::usage(format!("--body-file -: cannot read stdin: {e}")))?,
        (None, Some(path)) => {
            std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("--body-file {}: {e}", path.display())))?
        }
        (None, None) => String::new(),
    };
    let request = json!({
        "repository": args.repo,
        "base_ref": args.base,
        "task": {"title": args.title, "body": body},
        "tenant": args.tenant,
        "agent_profile": args.profile,
        "issue": args.issue,
        "priority": args.priority,
        "on_behalf_of": args.on_behalf_of,
    });
    let accepted = api.post("/v1/runs", Some(&request)).await?;
    let id = accepted["id"].as_str().unwrap_or_default().to_owned();
    if !args.watch {
        if json {
            println!("{accepted}");
        } else {
            println!("{id}");
            let state = accepted["state"].as_str().unwrap_or("queued");
            eprintln!("paddock: run {id} {state}; follow it with `paddock logs -f {id}`");
        }
        return Ok(Exit::Ok);
    }
    if !json {
        eprintln!("paddock: run {id} {}", accepted["state"].as_str().unwrap_or("queued"));
        if accepted["state"] == "awaiting_approval" {
            eprintln!("paddock: its policy asks for approval by another person: `paddock approve {id}`");
        }
    }
    let end = watch::follow(api, &id, watch::Show { json, progress: !json }).await?;
    let run = api.get(&format!("/v1/runs/{}", segment("run", &id)?)).await?;
    ended(&run, &end, json)
}

/// How a followed run ended: its summary, and exit 0 only if it succeeded.
fn ended(run: &Value, end: &Value, json: bool) -> Result<Exit> {
    if json {
        println!("{}", json!({"event": "end", "run": run}));
    } else {
        show::ending(run, end);
    }
    let state = run["state"].as_str().or(end["state"].as_str());
    Ok(if state == Some("succeeded") { Exit::Ok } else { Exit::No })
}

/// Up to `limit` runs, following pages.
async fn list(api: &Api, state: Option<&str>, limit: u32) -> Result<Vec<Value>> {
    let mut runs = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = (limit as usize - runs.len()).min(100);
        let mut query = vec![("limit", page.to_string())];
        query.extend(state.map(|s| ("state", s.to_owned())));
        query.extend(cursor.take().map(|c| ("cursor", c)));
        let answer = api.get_with("/v1/runs", &query).await?;
        runs.extend(answer["runs"].as_array().cloned().unwrap_or_default());
        cursor = answer["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() || runs.len() >= limit as usize {
            runs.truncate(limit as usize);
            return Ok(runs);
        }
    }
}
