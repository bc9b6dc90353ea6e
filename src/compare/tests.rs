use super::*;

fn classification() -> Task {
    Task::Classification {
        classes: vec![0, 1],
        class_names: vec![],
        label_output: "label".into(),
        probabilities_output: Some("probabilities".into()),
    }
}

fn class(label: i64) -> Prediction {
    Prediction::Class { label, probabilities: None }
}

fn outcome(version: &str, role: Role, predictions: Vec<Prediction>) -> ModelOutcome {
    ModelOutcome { version: VersionId::new(version), role, status: Status::Ok, latency_ms: Some(0.5), predictions }
}

fn observation(id: usize, champion: Prediction, challenger: Prediction) -> Observation {
    Observation {
        request_id: id.to_string(),
        slice: None,
        results: vec![outcome("1", Role::Champion, vec![champion]), outcome("2", Role::Challenger, vec![challenger])],
    }
}

/// Rows where (champion right, challenger right) occur `both`, `only_a`, `only_b`, `neither` times.
fn classified(both: usize, only_a: usize, only_b: usize, neither: usize) -> Comparison {
    let mut comparison = Comparison::new("m", classification(), CompareSettings::default());
    let cases = [(both, 1, 1), (only_a, 1, 0), (only_b, 0, 1), (neither, 0, 0)];
    let mut id = 0;
    for (count, a, b) in cases {
        for _ in 0..count {
            id += 1;
            let obs = observation(id, class(a), class(b));
            comparison.add(&obs);
            comparison.add_truth(&obs, &Truth(vec![1.0]));
        }
    }
    comparison
}

#[test]
fn classification_pairs_use_mcnemar_on_the_discordant_pairs() {
    let report = classified(150, 10, 30, 10).report();
    let pair = &report.pairs[0];
    assert_eq!(pair.labelled_pairs, 200);
    assert_eq!(pair.champion_metric, Some(160.0 / 200.0));
    assert_eq!(pair.challenger_metric, Some(180.0 / 200.0));
    assert_eq!(pair.improvement, Some(0.1));
    assert_eq!(pair.p_value, Some(stats::mcnemar_exact(10, 30)));
    assert_eq!(pair.verdict, Verdict::Better);
    let [low, high] = pair.improvement_ci.unwrap();
    assert!(low > 0.0 && high < 0.2, "{low} {high}");
    assert_eq!(pair.agreement, Some(160.0 / 200.0));
    assert_eq!(report.models[0].accuracy, Some(0.8));
    assert_eq!(report.models[1].accuracy, Some(0.9));
}

#[test]
fn verdicts_cover_worse_too_little_data_and_no_difference() {
    assert_eq!(classified(150, 30, 10, 10).report().pairs[0].verdict, Verdict::Worse);
    let few = classified(10, 2, 3, 0).report();
    assert_eq!(few.pairs[0].verdict, Verdict::NotEnoughData);
    assert!(few.pairs[0].more_pairs_needed.unwrap() >= 15);
    // A small effect on a few hundred pairs: not significant, and the report says how many more it needs.
    let small = classified(300, 20, 24, 0).report();
    assert_eq!(small.pairs[0].verdict, Verdict::NotEnoughData);
    assert!(small.pairs[0].more_pairs_needed.unwrap() > 1000);
    let same = classified(300, 20, 20, 0).report();
    assert_eq!(same.pairs[0].verdict, Verdict::NoSignificantDifference);
    assert_eq!(same.pairs[0].more_pairs_needed, None);
}

/// The gauges read `headline_metrics` and `pair_reports` instead of a whole report: the same figures.
fn assert_gauges_read_the_report(comparison: &Comparison) {
    let report = comparison.report();
    let headline: Vec<(String, &str, f64)> =
        comparison.headline_metrics().map(|(version, metric, value)| (version.to_owned(), metric, value)).collect();
    let from_report: Vec<(String, &str, f64)> = report
        .models
        .iter()
        .filter_map(|m| match (m.accuracy, m.mae) {
            (Some(a), _) => Some((m.version.clone(), "accuracy", a)),
            (None, Some(mae)) => Some((m.version.clone(), "mae", mae)),
            _ => None,
        })
        .collect();
    assert_eq!(headline, from_report);
    assert_eq!(headline.len(), 2, "{headline:?}");
    assert_eq!(serde_json::to_value(comparison.pair_reports()).unwrap(), serde_json::to_value(&report.pairs).unwrap());
}

#[test]
fn the_gauges_show_the_reports_figures() {
    assert_gauges_read_the_report(&classified(150, 10, 30, 10));
    let mut regression =
        Comparison::new("r", Task::Regression { prediction_output: "variable".into() }, CompareSettings::default());
    for i in 0..40 {
        let obs = observation(i, Prediction::Value(i as f64 + 1.0), Prediction::Value(i as f64 - 0.5));
        regression.add(&obs);
        regression.add_truth(&obs, &Truth(vec![i as f64]));
    }
    assert_gauges_read_the_report(&regression);
    // Before any label, no version has a headline metric.
    let unlabelled = Comparison::new("m", classification(), CompareSettings::default());
    assert_eq!(unlabelled.headline_metrics().count(), 0);
}

#[test]
fn regression_pairs_use_wilcoxon_on_absolute_errors() {
    let task = Task::Regression { prediction_output: "variable".into() };
    let mut comparison = Comparison::new("r", task, CompareSettings::default());
    let (mut differences, mut champions, mut challengers) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..80 {
        let truth = 100.0 + 5.0 * i as f64;
        let champion = truth + if i % 2 == 0 { 10.0 } else { -12.0 };
        let challenger = truth + if i % 3 == 0 { 4.0 } else { -9.5 + (i % 5) as f64 };
        let obs = observation(i, Prediction::Value(champion), Prediction::Value(challenger));
        comparison.add(&obs);
        comparison.add_truth(&obs, &Truth(vec![truth]));
        champions.push(champion);
        challengers.push(challenger);
        differences.push((champion - truth).abs() - (challenger - truth).abs());
    }
    let report = comparison.report();
    let pair = &report.pairs[0];
    assert_eq!(pair.metric, "mae");
    assert_eq!(pair.p_value, Some(stats::wilcoxon(&differences).unwrap().1));
    let expected = stats::PairedDifference::of(&differences, 0.95).unwrap();
    assert!((pair.improvement.unwrap() - expected.mean).abs() < 1e-12);
    assert!((pair.improvement_ci.unwrap()[0] - expected.ci_low).abs() < 1e-9);
    assert_eq!(pair.verdict, Verdict::Better);
    assert!((pair.correlation.unwrap() - stats::pearson(&champions, &challengers).unwrap()).abs() < 1e-12);
    assert_eq!(pair.divergence, stats::ks_statistic(&champions, &challengers));
    let mae = |v: &str| report.models.iter().find(|m| m.version == v).unwrap().mae.unwrap();
    assert!(mae("2") < mae("1"));
}

#[test]
fn log_loss_and_brier_match_scikit_learn() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/stats/reference.json");
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let scores = &reference["scores"];
    let mut comparison = Comparison::new("m", classification(), CompareSettings::default());
    for (i, (y, p1)) in scores["y"].as_array().unwrap().iter().zip(scores["p1"].as_array().unwrap()).enumerate() {
        let p1 = p1.as_f64().unwrap();
        let prediction = Prediction::Class { label: i64::from(p1 >= 0.5), probabilities: Some(vec![1.0 - p1, p1]) };
        let obs = Observation {
            request_id: i.to_string(),
            slice: None,
            results: vec![outcome("1", Role::Champion, vec![prediction])],
        };
        comparison.add(&obs);
        comparison.add_truth(&obs, &Truth(vec![y.as_f64().unwrap()]));
    }
    let model = &comparison.report().models[0];
    assert!((model.log_loss.unwrap() - scores["log_loss"].as_f64().unwrap()).abs() < 1e-12);
    assert!((model.brier.unwrap() - scores["brier"].as_f64().unwrap()).abs() < 1e-12);
}

#[test]
fn a_failed_challenger_counts_against_coverage_not_accuracy() {
    let mut comparison = Comparison::new("m", classification(), CompareSettings::default());
    for i in 0..10 {
        let mut obs = observation(i, class(1), class(1));
        if i < 4 {
            obs.results[1].status = Status::Timeout;
            obs.results[1].predictions.clear();
            obs.results[1].latency_ms = None;
        }
        comparison.add(&obs);
        comparison.add_truth(&obs, &Truth(vec![1.0]));
    }
    let report = comparison.report();
    assert_eq!(report.pairs[0].coverage, Some(0.6));
    assert_eq!(report.pairs[0].labelled_pairs, 6);
    let challenger = report.models.iter().find(|m| m.version == "2").unwrap();
    assert_eq!((challenger.timeouts, challenger.labelled_rows, challenger.accuracy), (4, 6, Some(1.0)));
}

#[test]
fn truth_is_checked_against_the_task() {
    let task = classification();
    assert_eq!(Truth::parse(&serde_json::json!(1), &task), Ok(Truth(vec![1.0])));
    assert_eq!(Truth::parse(&serde_json::json!([0, 1]), &task), Ok(Truth(vec![0.0, 1.0])));
    assert!(Truth::parse(&serde_json::json!(2), &task).unwrap_err().contains("classes"));
    assert!(Truth::parse(&serde_json::json!(0.5), &task).is_err());
    assert!(Truth::parse(&serde_json::json!("benign"), &task).unwrap_err().contains("number"));
    assert!(Truth::parse(&serde_json::json!([]), &task).is_err());
    let regression = Task::Regression { prediction_output: "y".into() };
    assert_eq!(Truth::parse(&serde_json::json!(151.5), &regression), Ok(Truth(vec![151.5])));
}

/// splitmix64: a small deterministic generator for the simulations (here and in `simulations`).
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs in which the policy, checked after every label up to `labels`, promotes the challenger;
/// and the mean number of labels it took when it did.
fn simulate(champion: f64, challenger: f64, labels: u64, runs: u64, seed: u64) -> (u64, f64) {
    let settings = policy::PolicySettings { enabled: true, min_labelled_pairs: 100, ..Default::default() };
    let (one, two) = (VersionId::new("1"), VersionId::new("2"));
    let mut rng = Rng(seed);
    let (mut promoted, mut at) = (0, 0);
    for _ in 0..runs {
        let mut comparison = Comparison::new("m", classification(), CompareSettings::default());
        for i in 0..labels {
            // Errors independent between the models: each is right with its own accuracy.
            let a = i64::from(rng.next() < champion);
            let b = i64::from(rng.next() < challenger);
            let obs = observation(i as usize, class(a), class(b));
            comparison.add(&obs);
            comparison.add_truth(&obs, &Truth(vec![1.0]));
            if policy::decide(&comparison, &one, std::slice::from_ref(&two), None, &settings).is_some() {
                promoted += 1;
                at += i + 1;
                break;
            }
        }
    }
    (promoted, if promoted == 0 { 0.0 } else { at as f64 / promoted as f64 })
}

#[test]
fn the_policy_rarely_promotes_an_equal_challenger_however_often_it_looks() {
    // A/A: both 90% accurate, checked after every one of 3,000 labels, 400 runs. Ville's inequality
    // bounds the rate by alpha = 0.05; with a Monte Carlo margin of three standard errors
    // (3·√(0.05·0.95/400) = 0.033) the test fails above 33 of 400.
    let (promoted, _) = simulate(0.90, 0.90, 3_000, 400, 1);
    eprintln!("A/A: promoted in {promoted} of 400 runs");
    assert!(promoted <= 33, "promoted an equal challenger in {promoted} of 400 runs");
}

#[test]
fn the_policy_finds_a_challenger_three_points_better() {
    // 90% against 93%, errors independent (15.6% of pairs discordant), checked after every label.
    // Measured over 200 runs: power 0.34 within 1,000 labelled pairs, 0.68 within 2,000, 0.88
    // within 3,000 (mean 1,229 labels when found), 0.995 within 5,000. The test takes 3,000 and
    // accepts 0.80 or more (0.88 less three standard errors, 3·√(0.88·0.12/200) = 0.07).
    let (promoted, mean_labels) = simulate(0.90, 0.93, 3_000, 200, 2);
    eprintln!("+3 points: promoted in {promoted} of 200 runs, after {mean_labels:.0} labels on average");
    assert!(promoted >= 160, "found the better challenger in only {promoted} of 200 runs");
}

#[test]
fn the_policy_promotes_only_within_latency_and_error_bounds_and_rolls_back() {
    let mut comparison = classified(150, 5, 45, 0);
    let (one, two) = (VersionId::new("1"), VersionId::new("2"));
    let challengers = std::slice::from_ref(&two);
    let settings = policy::PolicySettings { enabled: true, min_labelled_pairs: 100, ..Default::default() };
    let decision = policy::decide(&comparison, &one, challengers, None, &settings).unwrap();
    assert!(matches!(&decision, policy::Decision::Promote { version, .. } if *version == two), "{decision:?}");
    let evidence = decision.evidence();
    assert!(evidence.sequential_p_value < 0.05 && (evidence.improvement - 0.2).abs() < 1e-12, "{evidence:?}");
    // The same challenger, if it replaced by the current champion, is a rollback.
    let back = policy::decide(&comparison, &one, challengers, Some(&two), &settings).unwrap();
    assert!(matches!(back, policy::Decision::Rollback { .. }));
    let no_rollback = policy::PolicySettings { rollback: false, ..settings.clone() };
    assert_eq!(policy::decide(&comparison, &one, challengers, Some(&two), &no_rollback), None);
    // Too slow (recorded at 0.5 ms), too few pairs, too small an effect: no decision.
    for strict in [
        policy::PolicySettings { max_p99_ms: Some(0.1), ..settings.clone() },
        policy::PolicySettings { min_labelled_pairs: 1_000, ..settings.clone() },
        policy::PolicySettings { min_improvement: 0.25, ..settings.clone() },
    ] {
        assert_eq!(policy::decide(&comparison, &one, challengers, None, &strict), None, "{strict:?}");
    }
    // A challenger that fails more than 1% of the time is not promoted.
    for i in 0..10 {
        let mut obs = observation(1000 + i, class(1), class(1));
        obs.results[1].status = Status::Error;
        obs.results[1].predictions.clear();
        comparison.add(&obs);
    }
    assert_eq!(policy::decide(&comparison, &one, challengers, None, &settings), None);
}

/// A log line: the record of request `id` (champion 1 says class 1, challenger 2 class 0), or its label.
fn line(id: &str, label: Option<i64>) -> Option<crate::outcomes::reader::Line> {
    let text = match label {
        Some(truth) => format!(r#"{{"kind":"feedback","request_id":"{id}","model":"m","truth":{truth}}}"#),
        None => format!(
            r#"{{"kind":"outcome","request_id":"{id}","model":"m","task":{{"kind":"classification","classes":[0,1],"label_output":"label"}},
                "results":[{{"version":"1","role":"champion","status":"ok","outputs":{{"label":[1]}}}},
                           {{"version":"2","role":"challenger","status":"ok","outputs":{{"label":[0]}}}}]}}"#
        ),
    };
    Some(serde_json::from_str(&text).expect("a log line"))
}

#[test]
fn a_bounded_offline_join_forgets_its_oldest_records_as_the_live_index_does() {
    for (capacity, joined) in [(None, 3), (Some(2), 2)] {
        let mut offline = match capacity {
            Some(c) => offline::OfflineComparison::bounded(CompareSettings::default(), c),
            None => offline::OfflineComparison::new(CompareSettings::default()),
        };
        for id in ["a", "b", "c"] {
            offline.line(line(id, None));
        }
        for id in ["a", "b", "c"] {
            offline.line(line(id, Some(1)));
        }
        let (comparisons, summary) = offline.finish(0);
        assert_eq!(comparisons["m"].report().labelled_records, joined, "{capacity:?}");
        assert_eq!(summary.unmatched_feedback, 3 - joined, "{capacity:?}");
    }
}

/// A seeded stream of log lines: records of three versions (probabilities, latencies, a champion
/// that changes halfway), labels sometimes before their record, sometimes twice, sometimes for a
/// record never seen.
fn stream(n: usize) -> Vec<String> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    let mut lines = Vec::new();
    let mut waiting: Vec<(usize, i64)> = Vec::new();
    for i in 0..n {
        let champion = if i < n / 2 { "1" } else { "3" };
        let results: Vec<String> = ["1", "2", "3"]
            .iter()
            .map(|v| {
                let p = (next(1000) as f64) / 1000.0;
                let role = if *v == champion { "champion" } else { "challenger" };
                format!(
                    r#"{{"version":"{v}","role":"{role}","status":"ok","latency_ms":{},"outputs":{{"label":[{}],"probabilities":[[{},{}]]}}}}"#,
                    0.05 + next(5000) as f64 / 997.0,
                    u8::from(p > 0.5),
                    1.0 - p,
                    p
                )
            })
            .collect();
        let record = format!(
            r#"{{"kind":"outcome","request_id":"r{i}","model":"m","task":{{"kind":"classification","classes":[0,1],"label_output":"label","probabilities_output":"probabilities"}},"results":[{}]}}"#,
            results.join(",")
        );
        let label = |id: usize, truth: i64| {
            format!(r#"{{"kind":"feedback","request_id":"r{id}","model":"m","truth":{truth}}}"#)
        };
        let truth = next(2) as i64;
        match next(10) {
            0 => lines.push(label(i, truth)),         // the label first
            1 => lines.push(label(i + 1_000_000, 1)), // a label whose record never comes
            _ => waiting.push((i, truth)),
        }
        lines.push(record);
        while waiting.len() > 3 || (!waiting.is_empty() && next(3) == 0) {
            let (id, truth) = waiting.remove(0);
            lines.push(label(id, truth));
            if next(20) == 0 {
                lines.push(label(id, 1 - truth)); // a duplicate: the first stands
            }
        }
    }
    lines
}

#[test]
fn a_resumed_analyst_goes_on_exactly_as_one_never_stopped() {
    let settings = CompareSettings::default();
    let lines = stream(600);
    let feed = |offline: &mut offline::OfflineComparison, lines: &[String]| {
        for text in lines {
            offline.line(serde_json::from_str(text).ok());
        }
    };
    let report = |offline: offline::OfflineComparison| {
        let (comparisons, summary) = offline.finish(0);
        let report = serde_json::to_value(comparisons["m"].report()).unwrap();
        (report, summary.records, summary.feedback, summary.duplicate_feedback, summary.unmatched_feedback)
    };
    let mut whole = offline::OfflineComparison::bounded(settings, 40);
    feed(&mut whole, &lines);
    let whole = report(whole);
    assert!(whole.0["labelled_records"].as_u64().unwrap() > 300, "{}", whole.0);
    // Cut anywhere, even twice: the resumed one reports the very same figures, to the last bit.
    for cuts in [vec![0], vec![1], vec![257], vec![lines.len() / 2, lines.len() / 2 + 3], vec![lines.len() - 1]] {
        let mut offline = offline::OfflineComparison::bounded(settings, 40);
        let mut from = 0;
        for cut in cuts.iter().copied() {
            feed(&mut offline, &lines[from..cut]);
            let bytes = offline.checkpoint().unwrap();
            offline = offline::OfflineComparison::resume(offline::CHECKPOINT_FORMAT, &bytes, settings).unwrap();
            from = cut;
        }
        feed(&mut offline, &lines[from..]);
        assert_eq!(report(offline), whole, "cut at {cuts:?}");
    }
}

#[test]
fn a_checkpoint_of_another_format_or_damaged_is_refused_by_name() {
    let offline = offline::OfflineComparison::bounded(CompareSettings::default(), 10);
    let bytes = offline.checkpoint().unwrap();
    let refused = offline::OfflineComparison::resume(2, &bytes, CompareSettings::default()).err().unwrap();
    assert_eq!(refused.to_string(), "checkpoint format 2 is not the format 1 this binary reads");
    let damaged = offline::OfflineComparison::resume(1, &bytes[..bytes.len() / 2], CompareSettings::default());
    assert!(damaged.err().unwrap().to_string().starts_with("checkpoint does not decode"));
}

/// A challenger better overall and worse on one slice: the report flags exactly that slice, and
/// a guarded policy holds the promotion naming it (an unguarded one promotes).
#[test]
fn a_challenger_worse_on_one_slice_is_flagged_and_held() {
    let mut comparison = Comparison::new("m", classification(), CompareSettings::default());
    let mut rng = Rng(5);
    // eu and us: the challenger is right 95% of the time, the champion 85%; apac: the reverse.
    for i in 0..6_000 {
        let slice = ["eu", "us", "apac"][i % 3];
        let (champion, challenger) = if slice == "apac" { (0.95, 0.85) } else { (0.85, 0.95) };
        let label = |p: f64, rng: &mut Rng| i64::from(rng.next() < p);
        let mut observation = observation(
            i,
            Prediction::Class { label: label(champion, &mut rng), probabilities: None },
            Prediction::Class { label: label(challenger, &mut rng), probabilities: None },
        );
        observation.slice = Some(slice.into());
        comparison.add(&observation);
        comparison.add_truth(&observation, &Truth(vec![1.0]));
    }
    let report = comparison.report();
    let pair = &report.pairs[0];
    assert_eq!(pair.verdict, Verdict::Better, "{pair:?}");
    assert_eq!(pair.worse_slices, ["apac"]);
    let slices: Vec<(&str, Verdict, bool)> =
        pair.slices.iter().map(|s| (s.slice.as_str(), s.verdict, s.flagged)).collect();
    assert_eq!(
        slices,
        [("eu", Verdict::Better, false), ("us", Verdict::Better, false), ("apac", Verdict::Worse, true)]
    );
    assert!(report.to_table().contains("slice apac"), "{}", report.to_table());

    let (champion, challenger) = (VersionId::new("1"), VersionId::new("2"));
    let guarded = policy::PolicySettings { enabled: true, guard_slices: true, ..Default::default() };
    match policy::decide(&comparison, &champion, std::slice::from_ref(&challenger), None, &guarded) {
        Some(policy::Decision::Hold { version, worse_slices, .. }) => {
            assert_eq!(version, challenger);
            assert_eq!(worse_slices.iter().map(|s| s.slice.as_str()).collect::<Vec<_>>(), ["apac"]);
        }
        other => panic!("expected a hold, got {other:?}"),
    }
    let unguarded = policy::PolicySettings { enabled: true, ..Default::default() };
    let decided = policy::decide(&comparison, &champion, std::slice::from_ref(&challenger), None, &unguarded);
    assert!(matches!(decided, Some(policy::Decision::Promote { .. })), "{decided:?}");

    // The slices survive a checkpoint: what an analyst's successor reads back.
    let bytes = serde_json::to_vec(&comparison).unwrap();
    let back: Comparison = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(back.report().pairs[0].slices, pair.slices);
}
