//! The web console (`/ui/`) in a real browser: `tests/console/console.test.mjs` drives Debian's
//! Chromium with playwright-core against two gateways started here on 127.0.0.1, fed labelled
//! holdout rows first. Needs Node.js with npm, and Chromium (`CHROMIUM`, else Debian's
//! `/usr/bin/chromium`, installed here from Debian's packages when missing and running as root, as
//! `.ci/run` does); the npm packages go into `tests/console/node_modules` from the lock file.
//! Screenshots go to `target/console-screenshots/`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::TestServer;
use gauntlet::cli::loadtest::{LoadtestArgs, run};

const TOKEN: &str = "console-s3cret";
const XSS: &str = "<img src=x onerror=\"window.__xss=1\">";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The demo repository, with markup in version 2's description and version 4's file corrupted.
fn repository(dir: &Path) {
    copy_dir(&common::models_dir(), dir);
    let manifest = dir.join("breast-cancer/2/manifest.json");
    let mut value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    value["description"] = XSS.into();
    std::fs::write(&manifest, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    let model = dir.join("breast-cancer/4/model.onnx");
    let mut bytes = std::fs::read(&model).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&model, bytes).unwrap();
}

async fn feed(server: &TestServer, model: &str, requests: u64) {
    let data = common::models_dir().join(model).join("holdout.csv");
    let args = LoadtestArgs {
        concurrency: Some(4),
        requests: Some(requests),
        feedback: true,
        feedback_delay: Duration::from_millis(20),
        ..common::loadtest_args(server, model, data)
    };
    let summary = run(&args).await.unwrap();
    assert_eq!(summary.errors, 0);
}

/// The browser: `CHROMIUM`, or Debian's, installed if missing (root only).
fn chromium() -> String {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return path;
    }
    let debian = "/usr/bin/chromium";
    if !Path::new(debian).exists() {
        let root = std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        assert!(
            root,
            "Chromium is missing, and the console's test drives a real browser: `sudo apt-get install \
             chromium` (Debian's), set CHROMIUM to a Chromium binary, or run the tests as root, as \
             `.ci/run` does, and they install it themselves"
        );
        let script = "exec 9>/tmp/gauntlet-apt-chromium.lock; flock 9; [ -x /usr/bin/chromium ] || \
             { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }";
        let status = std::process::Command::new("sh").args(["-c", script]).status().expect("sh runs");
        assert!(status.success() && Path::new(debian).exists(), "installing Chromium failed");
    }
    debian.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let browser = tokio::task::spawn_blocking(chromium).await.unwrap();
    let models = tempfile::tempdir().unwrap();
    repository(models.path());
    let dir = format!("models_dir={}", models.path().display());
    // A history point a second, so the page has a history written before it opened to draw.
    let mut open = TestServer::start(&[&dir, "comparison.history_interval_s=1"]).await;
    let mut guarded = TestServer::start(&[&dir, &format!("admin_token={TOKEN}")]).await;
    // A challenger better overall and worse for one region: what the slices view is for.
    let sliced_overrides = [
        "models.breast-cancer.champion=2",
        "models.breast-cancer.challengers=[\"1\"]",
        "models.breast-cancer.slices.header=x-region",
        "shadow_cpu_budget=2.0",
    ];
    let mut sliced = TestServer::start(&sliced_overrides).await;
    let requests = common::feed_regions(&sliced, 21).await;
    common::eventually("the sliced gateway's labels join", Duration::from_secs(60), || async {
        let report: serde_json::Value =
            reqwest::get(sliced.url("/admin/models/breast-cancer/comparison")).await.ok()?.json().await.ok()?;
        (report["labelled_records"].as_u64()? == requests).then_some(())
    })
    .await;
    // More rows than the holdout has (it cycles), so that drift has a judged window to show.
    feed(&open, "breast-cancer", 300).await;
    feed(&open, "diabetes", 111).await;
    // At least two history points before the page opens: more labelled traffic until there are.
    common::eventually("two history points", Duration::from_secs(60), || async {
        let history: serde_json::Value =
            reqwest::get(open.url("/admin/models/breast-cancer/history")).await.ok()?.json().await.ok()?;
        if history["points"].as_array()?.len() >= 2 {
            return Some(());
        }
        feed(&open, "breast-cancer", 20).await;
        None
    })
    .await;

    // Every label joined before the browser looks, so the page and the API show the same figures.
    common::eventually("the labels join", Duration::from_secs(60), || async {
        let report: serde_json::Value =
            reqwest::get(open.url("/admin/models/breast-cancer/comparison")).await.ok()?.json().await.ok()?;
        (report["labelled_records"].as_u64()? >= report["records"].as_u64()? && report["records"].as_u64()? > 0)
            .then_some(())
    })
    .await;

    // And the drift monitor has judged a window, so the page has PSI to draw.
    common::eventually("drift judges a window", Duration::from_secs(60), || async {
        let report: serde_json::Value =
            reqwest::get(open.url("/admin/models/breast-cancer/drift")).await.ok()?.json().await.ok()?;
        report["windows"].as_array()?.iter().any(|w| w["judged"] == true).then_some(())
    })
    .await;

    let console = common::root().join("tests/console");
    if !console.join("node_modules/playwright-core").exists() {
        let status = tokio::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&console)
            .status()
            .await
            .expect("npm runs");
        assert!(status.success(), "npm ci in tests/console failed");
    }
    let shots = common::root().join("target/console-screenshots");
    let output = tokio::process::Command::new("node")
        .arg(console.join("console.test.mjs"))
        .env("GAUNTLET_URL", format!("http://{}", open.addr))
        .env("GAUNTLET_TOKEN_URL", format!("http://{}", guarded.addr))
        .env("GAUNTLET_SLICES_URL", format!("http://{}", sliced.addr))
        .env("GAUNTLET_TOKEN", TOKEN)
        .env("SCREENSHOTS", &shots)
        .env("CHROMIUM", &browser)
        .output()
        .await
        .expect("node runs");
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the browser checks failed:\n{log}");
    eprintln!("console: {log}screenshots in {}", shots.display());
    for shot in ["laptop.png", "after-promotion.png", "narrow.png", "with-token.png", "slices.png"] {
        assert!(shots.join(shot).metadata().is_ok_and(|m| m.len() > 1000), "{shot}");
    }
    open.stop().await.unwrap();
    guarded.stop().await.unwrap();
    sliced.stop().await.unwrap();
}
