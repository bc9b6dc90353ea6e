//! The commands that talk to a running gateway or read its logs, for data scientists:
//! `gauntlet report`.

use anyhow::{Context, bail};

use crate::compare::{CompareSettings, Report, offline};

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The served model. With --log it may be left out: every model in the files.
    pub model: Option<String>,
    /// The gateway to ask.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Report from outcome-log files instead: a path or a quoted pattern such as 'outcomes/*.jsonl'
    /// (repeat the flag for more).
    #[arg(long)]
    pub log: Vec<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Admin token of the gateway.
    #[arg(long, env = "GAUNTLET_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Offline only (a gateway uses its own configuration): significance level.
    #[arg(long, default_value_t = CompareSettings::default().alpha)]
    pub alpha: f64,
    /// Offline only: labelled pairs below which the verdict is "not enough data".
    #[arg(long, default_value_t = CompareSettings::default().min_labelled_pairs)]
    pub min_labelled_pairs: u64,
}

pub async fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let reports = if args.log.is_empty() {
        let Some(model) = &args.model else { bail!("name the model to report on (or give --log files)") };
        vec![fetch_report(args, model).await?]
    } else {
        let files = offline::expand(&args.log)?;
        let settings =
            CompareSettings { alpha: args.alpha, min_labelled_pairs: args.min_labelled_pairs, ..Default::default() };
        let (comparisons, summary) = offline::read(&files, settings)?;
        if !args.json {
            eprintln!(
                "read {} files: {} records, {} labels ({} without their record, {} duplicates), {} unreadable lines",
                summary.files,
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
            .map(|c| c.report())
            .collect();
        if let Some(model) = &args.model
            && reports.is_empty()
        {
            bail!("the files hold no record of model '{model}'");
        }
        reports
    };
    if args.json {
        let json = match (&args.model, reports.as_slice()) {
            (Some(_), [one]) => serde_json::to_string_pretty(one)?,
            _ => serde_json::to_string_pretty(&reports)?,
        };
        println!("{json}");
    } else {
        let tables: Vec<String> = reports.iter().map(Report::to_table).collect();
        print!("{}", tables.join("\n"));
    }
    Ok(())
}

async fn fetch_report(args: &ReportArgs, model: &str) -> anyhow::Result<Report> {
    let url = format!("{}/admin/models/{model}/comparison", args.url.trim_end_matches('/'));
    let mut request = reqwest::Client::new().get(&url);
    if let Some(token) = &args.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.with_context(|| format!("asking {url}"))?;
    let status = response.status();
    let body = response.text().await.with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
        bail!("{url} answered {status}: {message}");
    }
    serde_json::from_str(&body).with_context(|| format!("{url} did not answer with a report"))
}
