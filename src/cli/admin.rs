//! The commands that talk to a running gateway or read its logs, for data scientists:
//! `gauntlet status | promote | rollback | load | unload | report | search`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::cluster::ClusterView;
use crate::compare::offline::{OfflineComparison, ReadSummary};
use crate::compare::policy::PolicySettings;
use crate::compare::replay::{PolicyReplay, Replayed};
use crate::compare::{CompareSettings, Comparison, Report};
use crate::drift::DriftReport;
use crate::http::admin::models::ModelView;
use crate::outcomes::reader;

/// Where the gateway is and how to reach its admin API.
#[derive(clap::Args, Debug, Clone)]
pub struct Connection {
    /// The gateway.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// A token with the scopes the command needs (`read`; `change` to change).
    #[arg(long, env = "GAUNTLET_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust for an https:// gateway, beside the built-in roots.
    #[arg(long)]
    pub cacert: Option<std::path::PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// An HTTP client that trusts the built-in roots and `cacert` (PEM), if given.
pub fn http_client(cacert: Option<&std::path::Path>) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = cacert {
        let pem = std::fs::read(path).with_context(|| format!("reading --cacert {}", path.display()))?;
        for certificate in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--cacert {} is not PEM certificates", path.display()))?
        {
            builder = builder.add_root_certificate(certificate);
        }
    }
    Ok(builder)
}

/// A change to one version of a model.
#[derive(clap::Args, Debug)]
pub struct VersionChange {
    model: String,
    version: String,
    /// Why: kept in the audit log.
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

#[derive(clap::Subcommand, Debug)]
pub enum AdminCommand {
    /// What a running gateway serves: champion, challengers, every version and its state; in a
    /// cluster, then every replica and whether it converged.
    Status {
        /// One model; all when left out.
        model: Option<String>,
        /// Only the cluster: every replica, its address, heartbeat and applied revisions.
        #[arg(long, conflicts_with = "model")]
        cluster: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Make a version the champion (loaded first if needed); the old champion keeps shadowing.
    Promote {
        model: String,
        version: String,
        /// Why: kept in the audit log.
        #[arg(long)]
        reason: Option<String>,
        /// Do not keep the old champion as a challenger.
        #[arg(long)]
        drop_previous: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Back to the previous champion.
    Rollback {
        model: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Load a version from the repository without a restart (again, if it is loaded).
    Load(VersionChange),
    /// Unload a version that is not the champion.
    Unload(VersionChange),
    /// Champion against challengers: live from a gateway, or offline from outcome-log files.
    Report(ReportArgs),
    /// Search every version in the repository (folder, object storage or MLflow) by its manifest,
    /// lineage and state: `gauntlet search --model breast-cancer holdout_metrics.accuracy '>' 0.96`.
    Search {
        /// The filter: field op value, joined by `and` (several words are joined with spaces).
        filter: Vec<String>,
        /// One model; all when left out.
        #[arg(long)]
        model: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
}

impl AdminCommand {
    pub async fn run(&self) -> anyhow::Result<()> {
        let reason = |r: &Option<String>| json!({ "reason": r });
        let (connection, method, path, body) = match self {
            Self::Report(args) => return report(args).await,
            Self::Search { filter, model, connection } => {
                return search(connection, &filter.join(" "), model.as_deref()).await;
            }
            Self::Status { cluster: true, connection, .. } => {
                let Some(view) = cluster(connection).await? else {
                    bail!("{} is one node, not a cluster (no [cluster] database_url)", connection.url)
                };
                return print(connection, &view, cluster_table(&view));
            }
            Self::Status { model: None, connection, .. } => {
                let models: Vec<ModelView> =
                    serde_json::from_value(call(connection, "GET", "/admin/models", None).await?)?;
                let mut table = models.iter().map(status_table).collect::<Vec<_>>().join("\n");
                if !connection.json
                    && let Some(view) = cluster(connection).await?
                {
                    table.push('\n');
                    table.push_str(&cluster_table(&view));
                }
                return print(connection, &models, table);
            }
            Self::Status { model: Some(model), connection, .. } => {
                let view: ModelView =
                    serde_json::from_value(call(connection, "GET", &format!("/admin/models/{model}"), None).await?)?;
                let mut table = status_table(&view);
                table.push_str(&last_change(connection, model).await?);
                return print(connection, &view, table);
            }
            Self::Promote { model, version, reason: why, drop_previous, connection } => (
                connection,
                "POST",
                format!("/admin/models/{model}/promote"),
                Some(json!({ "version": version, "keep_previous_as_challenger": !drop_previous, "reason": why })),
            ),
            Self::Rollback { model, reason: why, connection } => {
                (connection, "POST", format!("/admin/models/{model}/rollback"), Some(reason(why)))
            }
            Self::Load(VersionChange { model, version, reason: why, connection }) => {
                (connection, "POST", format!("/admin/models/{model}/versions/{version}/load"), Some(reason(why)))
            }
            Self::Unload(VersionChange { model, version, reason: why, connection }) => {
                (connection, "DELETE", format!("/admin/models/{model}/versions/{version}"), Some(reason(why)))
            }
        };
        let view: ModelView = serde_json::from_value(call(connection, method, &path, body).await?)?;
        let table = status_table(&view);
        print(connection, &view, table)
    }
}

async fn search(connection: &Connection, filter: &str, model: Option<&str>) -> anyhow::Result<()> {
    let mut params = vec![("q", filter)];
    params.extend(model.map(|m| ("model", m)));
    // Only for its query encoding: the path is joined to --url by `call`.
    let encoded = reqwest::Url::parse_with_params("http://gateway/", params)?;
    let query = encoded.query().unwrap_or_default();
    let view: crate::http::admin::repository::SearchView =
        serde_json::from_value(call(connection, "GET", &format!("/admin/repository?{query}"), None).await?)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({}): {} of {} versions{}",
        view.repository,
        view.kind,
        view.versions.len(),
        view.searched,
        if filter.is_empty() { String::new() } else { format!(" where {filter}") }
    );
    let text = |v: &Value, key: &str| v[key].as_str().unwrap_or("-").to_owned();
    for v in &view.versions {
        let metrics = v["holdout_metrics"].as_object().map_or(String::new(), |m| {
            m.iter().filter_map(|(k, x)| Some(format!("{k} {:.4}", x.as_f64()?))).collect::<Vec<_>>().join(", ")
        });
        let mut lineage =
            v["training"]["data_sha256"].as_str().map_or("-".to_owned(), |d| d.chars().take(12).collect());
        if let Some(run) = v["run_id"].as_str() {
            lineage.push_str(&format!(" run {}", run.chars().take(12).collect::<String>()));
        }
        if let Some(aliases) = v["aliases"].as_array().filter(|a| !a.is_empty()) {
            let names: Vec<&str> = aliases.iter().filter_map(Value::as_str).collect();
            lineage.push_str(&format!(" @{}", names.join(",@")));
        }
        let _ = writeln!(
            out,
            "  {:<16} {:<5} {:<10} data {:<12} {:<20} {}{}",
            text(v, "model"),
            text(v, "version"),
            text(v, "state"),
            lineage,
            v["created"].as_str().unwrap_or("-"),
            v["error"].as_str().map_or(text(v, "description"), |e| format!("refused: {e}")),
            if metrics.is_empty() { String::new() } else { format!(" [{metrics}]") },
        );
    }
    print(connection, &view, out)
}

fn print(connection: &Connection, value: &impl serde::Serialize, table: String) -> anyhow::Result<()> {
    if connection.json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{table}");
    }
    Ok(())
}

fn status_table(model: &ModelView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: champion {}, challengers [{}] at {:.0}% sampling{}{}",
        model.name,
        model.champion,
        model.challengers.join(", "),
        model.shadow_sample_rate * 100.0,
        model.canary.as_ref().map_or(String::new(), |c| format!(", canary {} at {:.1}%", c.version, c.share * 100.0)),
        model.previous.last().map_or(String::new(), |p| format!(", rollback to {p}")),
    );
    for v in &model.versions {
        let _ = writeln!(
            out,
            "  {:<6} {:<10} {:<12} {:>9} {}",
            v.version,
            v.state,
            v.backend.as_deref().unwrap_or("-"),
            v.one_row_us.map_or("-".into(), |us| format!("{us:.1} µs")),
            v.error.as_deref().or(v.description.as_deref()).unwrap_or("")
        );
    }
    out
}

/// The newest audited change of `model` as a line: what, by whom, when, why (empty if none, or
/// with `--json`, whose answer is the model's view).
async fn last_change(connection: &Connection, model: &str) -> anyhow::Result<String> {
    if connection.json {
        return Ok(String::new());
    }
    let audit = call(connection, "GET", &format!("/admin/models/{model}/audit?limit=1"), None).await?;
    let Some(entry) = audit["entries"].get(0) else { return Ok(String::new()) };
    let text = |key: &str| entry[key].as_str().unwrap_or("-").to_owned();
    let version = entry["version"].as_str().map_or(String::new(), |v| format!(" {v}"));
    let why = entry["reason"].as_str().map_or(String::new(), |r| format!(": {r}"));
    let refused = if text("result") == "ok" { String::new() } else { format!(" ({})", text("result")) };
    Ok(format!(
        "  last change: {}{version} by {} at {}{refused}{why}\n",
        text("action"),
        text("actor"),
        text("timestamp")
    ))
}

/// The cluster's view, or `None` from a gateway that is one node.
async fn cluster(connection: &Connection) -> anyhow::Result<Option<ClusterView>> {
    match call(connection, "GET", "/admin/cluster", None).await {
        Ok(view) => Ok(Some(serde_json::from_value(view)?)),
        Err(error) if error.downcast_ref::<NotFound>().is_some() => Ok(None),
        Err(error) => Err(error),
    }
}

fn cluster_table(view: &ClusterView) -> String {
    let mut out = String::new();
    let revisions: Vec<String> = view.deployments.iter().map(|(m, r)| format!("{m} at revision {r}")).collect();
    let _ = writeln!(out, "cluster: {}; {}", view.store, revisions.join(", "));
    for replica in &view.replicas {
        let applied: Vec<String> = replica.applied.iter().map(|(m, r)| format!("{m}@{r}")).collect();
        let age = replica.heartbeat_at.elapsed().map_or(0.0, |d| d.as_secs_f64());
        let state = match (replica.stale, replica.converged) {
            (true, _) => "stale",
            (false, true) => "converged",
            (false, false) => "behind",
        };
        let _ = writeln!(
            out,
            "  {:<16} {:<22} {:<10} heartbeat {:>5.1} s ago  {}{}",
            replica.id,
            replica.address,
            state,
            age,
            applied.join(" "),
            replica.problem.as_ref().map_or(String::new(), |p| format!("  ({p})")),
        );
    }
    out
}

/// An admin call answered 404.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotFound(String);

/// One admin call; an error answer becomes an error naming the status and the gateway's message.
async fn call(connection: &Connection, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let url = format!("{}{path}", connection.url.trim_end_matches('/'));
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut request = http_client(connection.cacert.as_deref())?.build()?.request(method.clone(), &url);
    if let Some(token) = &connection.token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.with_context(|| format!("{method} {url}"))?;
    let status = response.status();
    let text = response.text().await.with_context(|| format!("reading the answer of {url}"))?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let message = value["error"].as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
        let message = format!("{method} {url} answered {status}: {message}");
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(NotFound(message).into());
        }
        bail!(message);
    }
    Ok(value)
}

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The served model. With --log it may be left out: every model in the files.
    pub model: Option<String>,
    #[command(flatten)]
    pub connection: Connection,
    /// Report from outcome-log files instead: a path or a quoted pattern such as 'outcomes/*.jsonl'
    /// (repeat the flag for more).
    #[arg(long)]
    pub log: Vec<String>,
    /// Report from a cluster's store instead: its `records` and `labels` tables, in time order
    /// (a PostgreSQL URL, as `[cluster] database_url`).
    #[arg(long, conflicts_with = "log", value_name = "URL")]
    pub database: Option<String>,
    /// With --database: the cluster's schema (`[cluster] name`).
    #[arg(long, default_value = "gauntlet", requires = "database")]
    pub schema: String,
    /// Offline only (a gateway uses its own configuration): significance level.
    #[arg(long, default_value_t = CompareSettings::default().alpha)]
    pub alpha: f64,
    /// Offline only: labelled pairs below which the verdict is "not enough data".
    #[arg(long, default_value_t = CompareSettings::default().min_labelled_pairs)]
    pub min_labelled_pairs: u64,
    /// The drift report instead (with --json, as JSON), every series listed. Live without it, the
    /// table shows the comparison and then the series at warn or alert. With --log: the logged
    /// inputs (`log_inputs = "full"`) against the answering champion's profile from --models.
    #[arg(long)]
    pub drift: bool,
    /// Offline drift only: the model repository holding the champions' profiles.
    #[arg(long, default_value = "models")]
    pub models: std::path::PathBuf,
    /// Offline: replay each model's promotion policy over the records and labels in time order and
    /// list what it would have decided and when (enabled or not; the policy --config and --set give).
    #[arg(long)]
    pub policy: bool,
    /// With --policy: the configuration whose `models.<name>.policy` is replayed.
    #[arg(long, default_value = "gauntlet.toml", requires = "policy")]
    pub config: std::path::PathBuf,
    /// With --policy: a key of it as KEY=VALUE, e.g. `models.breast-cancer.policy.alpha=0.01`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "policy")]
    pub set: Vec<String>,
}

pub async fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let mut drift = None;
    let reports = if args.log.is_empty() && args.database.is_none() {
        let Some(model) = &args.model else { bail!("name the model to report on (or give --log files)") };
        // The drift report is shown with --drift, and after the comparison's table (not its JSON).
        if args.drift || !args.connection.json {
            let value = call(&args.connection, "GET", &format!("/admin/models/{model}/drift"), None).await?;
            let report: DriftReport =
                serde_json::from_value(value).context("the gateway did not answer with a drift report")?;
            if args.drift {
                if args.connection.json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", report.to_table(true));
                }
                return Ok(());
            }
            drift = Some(report);
        }
        vec![fetch_report(args, model).await?]
    } else if args.drift {
        if args.database.is_some() {
            bail!("--drift reads outcome-log files (--log); the store's drift is not there yet");
        }
        return offline_drift(args);
    } else {
        let settings =
            CompareSettings { alpha: args.alpha, min_labelled_pairs: args.min_labelled_pairs, ..Default::default() };
        let policies = if args.policy {
            let serve = crate::config::ServeArgs {
                config: Some(args.config.clone()),
                set: args.set.clone(),
                ..Default::default()
            };
            let config = crate::config::Config::load_from(&serve, &[])
                .with_context(|| format!("reading the policies of {}", args.config.display()))?;
            Some(config.policies())
        } else {
            None
        };
        let mut offline = Offline::new(settings, policies);
        let (source, files) = match &args.database {
            Some(url) => {
                // The blocking client runs a runtime of its own: not on an async worker.
                let location = tokio::task::block_in_place(|| {
                    crate::cluster::read_outcomes(url, &args.schema, &mut |line| {
                        offline.line(line);
                    })
                })?;
                (location, 0)
            }
            None => {
                let files = reader::expand(&args.log)?;
                reader::each_line(&files, &mut |line| {
                    offline.line(line);
                })?;
                (format!("{} files", files.len()), files.len())
            }
        };
        let (comparisons, mut replayed, summary) = offline.finish(files);
        if !args.connection.json {
            eprintln!(
                "read {source}: {} records, {} labels ({} without their record, {} duplicates), {} unreadable lines",
                summary.records,
                summary.feedback,
                summary.unmatched_feedback,
                summary.duplicate_feedback,
                summary.unreadable_lines
            );
        }
        let reports: Vec<Report> = comparisons
            .values()
            .filter(|c| args.model.as_deref().is_none_or(|m| m == c.model()))
            .map(|c| {
                let mut report = c.report();
                report.policy = replayed.remove(c.model());
                report
            })
            .collect();
        if let Some(model) = &args.model
            && reports.is_empty()
        {
            bail!("the files hold no record of model '{model}'");
        }
        reports
    };
    if args.connection.json {
        let json = match (&args.model, reports.as_slice()) {
            (Some(_), [one]) => serde_json::to_string_pretty(one)?,
            _ => serde_json::to_string_pretty(&reports)?,
        };
        println!("{json}");
    } else {
        let mut tables: Vec<String> = reports.iter().map(Report::to_table).collect();
        tables.extend(drift.map(|d| d.to_table(false)));
        print!("{}", tables.join("\n"));
    }
    Ok(())
}

/// The offline report's reader: the comparison alone, or with the policy replayed on it.
enum Offline {
    Report(OfflineComparison),
    Replay(PolicyReplay),
}

impl Offline {
    fn new(settings: CompareSettings, policies: Option<BTreeMap<String, PolicySettings>>) -> Self {
        match policies {
            Some(policies) => Self::Replay(PolicyReplay::new(settings, policies)),
            None => Self::Report(OfflineComparison::new(settings)),
        }
    }

    fn line(&mut self, line: Option<reader::Line>) {
        match self {
            Self::Report(offline) => {
                offline.line(line);
            }
            Self::Replay(replay) => replay.line(line),
        }
    }

    fn finish(self, files: usize) -> (BTreeMap<String, Comparison>, BTreeMap<String, Replayed>, ReadSummary) {
        match self {
            Self::Report(offline) => {
                let (comparisons, summary) = offline.finish(files);
                (comparisons, BTreeMap::new(), summary)
            }
            Self::Replay(replay) => {
                let (replayed, comparisons, summary) = replay.finish(files);
                (comparisons, replayed, summary)
            }
        }
    }
}

/// `report --log … --drift`.
fn offline_drift(args: &ReportArgs) -> anyhow::Result<()> {
    let files = reader::expand(&args.log)?;
    let repository = crate::repository::Repository::open(&args.models)?;
    let defaults = crate::drift::DriftSettings::default();
    let (reports, summary) = crate::drift::offline::read(&files, &repository, defaults.thresholds, defaults.min_rows)?;
    if !args.connection.json {
        eprintln!(
            "read {} files: {} records ({} without logged inputs, {} whose version or tensors the repository does not match), {} unreadable lines",
            files.len(),
            summary.records,
            summary.without_inputs,
            summary.unusable,
            summary.unreadable_lines
        );
    }
    let reports: Vec<DriftReport> =
        reports.into_iter().filter(|r| args.model.as_deref().is_none_or(|m| m == r.model)).collect();
    if reports.is_empty() {
        bail!(
            "the files hold no record with logged inputs{}",
            args.model.as_ref().map(|m| format!(" of model '{m}'")).unwrap_or_default()
        );
    }
    if args.connection.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        let tables: Vec<String> = reports.iter().map(|r| r.to_table(true)).collect();
        print!("{}", tables.join("\n"));
    }
    Ok(())
}

async fn fetch_report(args: &ReportArgs, model: &str) -> anyhow::Result<Report> {
    let value = call(&args.connection, "GET", &format!("/admin/models/{model}/comparison"), None).await?;
    serde_json::from_value(value).context("the gateway did not answer with a report")
}
