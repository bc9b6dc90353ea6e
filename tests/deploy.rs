//! The deployment files: the Kubernetes manifests validate against the API's schemas, and the
//! configuration they ship is one the gateway accepts, with a shadow budget inside the CPU limit.

mod common;

use std::process::Command;

fn manifests() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(common::root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn kubernetes_manifests_validate_strictly() {
    let validator = common::python().with_file_name("kubernetes-validate");
    let files = manifests();
    assert!(files.len() >= 5, "{files:?}");
    let output = Command::new(&validator).args(["--strict", "--quiet"]).args(&files).output().unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The validator refuses what it should: a misspelt field fails.
    let deployment = std::fs::read_to_string(common::root().join("deploy/kubernetes/deployment.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("deployment.yaml");
    std::fs::write(&bad, deployment.replace("readOnlyRootFilesystem", "readOnlyRootFs")).unwrap();
    assert!(!Command::new(&validator).args(["--strict", "--quiet"]).arg(&bad).output().unwrap().status.success());
}

#[test]
fn the_configmap_is_a_valid_configuration_within_the_cpu_limit() {
    let text = std::fs::read_to_string(common::root().join("deploy/kubernetes/configmap.yaml")).unwrap();
    let toml: String = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("gauntlet.toml: |"))
        .skip(1)
        .map(|l| l.strip_prefix("    ").unwrap_or(l.trim()))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gauntlet.toml");
    std::fs::write(&path, &toml).unwrap();
    let args = gauntlet::config::ServeArgs { config: Some(path), ..Default::default() };
    let env = [("GAUNTLET_CLUSTER__DATABASE_URL".to_owned(), "postgres://u:p@db:5432/g".to_owned())];
    let config = gauntlet::config::Config::load_from(&args, &env).expect("the ConfigMap's gauntlet.toml is valid");
    let deployment = std::fs::read_to_string(common::root().join("deploy/kubernetes/deployment.yaml")).unwrap();
    assert!(config.cluster.database_url.is_some());
    // Every replica reads versions from one object store, its credentials from the Secret.
    assert!(config.repository.as_deref().is_some_and(|r| r.starts_with("s3://")), "{:?}", config.repository);
    for variable in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert!(deployment.contains(&format!("name: {variable}")), "{variable} is not set in deployment.yaml");
    }
    // Nothing is on loopback in a pod: labels and the console's view need tokens, from the Secret.
    assert!(!config.auth.trust_loopback);
    let holds = |scope| config.auth.tokens.iter().any(|t| t.scopes.contains(&scope) && t.token_env.is_some());
    assert!(holds(gauntlet::auth::Scope::Labels) && holds(gauntlet::auth::Scope::Read));
    for token in &config.auth.tokens {
        let variable = token.token_env.as_deref().unwrap();
        assert!(deployment.contains(&format!("name: {variable}")), "{variable} is not set in deployment.yaml");
    }
    let limit: f64 = deployment
        .lines()
        .skip_while(|l| l.trim() != "limits:")
        .find_map(|l| l.trim().strip_prefix("cpu: "))
        .map(|v| v.trim_matches('"').parse().unwrap())
        .expect("a CPU limit");
    // The shadow's budget and the inference pool fit inside the limit, leaving the async workers room.
    assert!(config.shadow_cpu_budget < limit, "{} of {limit}", config.shadow_cpu_budget);
    assert!(config.inference_threads as f64 <= limit);
}
