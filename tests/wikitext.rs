//! Checks on the real corpora in `../shared/data`; skipped with a message where that folder is absent.

use std::path::PathBuf;

use ailla::data::{load_splits, TokenizerKind, Vocabulary};

fn shared(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data").join(name);
    if path.is_dir() {
        Some(path)
    } else {
        eprintln!("skipped: {} is absent (the shared corpora are not on this machine)", path.display());
        None
    }
}

#[test]
fn wikitext2_word_counts_match_the_published_statistics() {
    let Some(dir) = shared("wikitext-2") else {
        return;
    };
    let splits = load_splits(&dir).unwrap();
    let vocab = Vocabulary::build(TokenizerKind::Word, &splits.train, 1_000_000);
    // shared/data/README.md: with <eos> per line, 2,088,628 / 217,646 / 245,569 tokens, vocabulary 33,278
    assert_eq!(vocab.len(), 33_278);
    assert_eq!(vocab.encode(&splits.train).len(), 2_088_628);
    assert_eq!(vocab.encode(&splits.valid).len(), 217_646);
    assert_eq!(vocab.encode(&splits.test).len(), 245_569);
    // WikiText-2 is closed-vocabulary: every valid and test word occurs in train (rare ones are `<unk>`)
    let unseen = splits.valid.split_whitespace().chain(splits.test.split_whitespace()).find(|w| vocab.id(w).is_none());
    assert_eq!(unseen, None);
}

/// `ailla run pipelines/aila.yaml --quick`, as CI runs it: every member of both protocols and both
/// tokenizations trains, and the report sets the published figures beside ours.
#[test]
fn the_quick_reproduction_runs_both_protocols_and_both_tokenizations() {
    let Some(data) = shared("wikitext-2") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let pipeline = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pipelines/aila.yaml");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ailla"))
        .args(["--threads", "2", "run"])
        .arg(&pipeline)
        .arg("--quick")
        .arg("--data")
        .arg(&data)
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let run = work.path().join("runs/aila-quick");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["failed_members"].as_array().map(Vec::len), Some(0));
    assert_eq!(report["groups"].as_array().map(Vec::len), Some(14), "2 tokenizations × 7 schedules");
    let published = &report["published"];
    let labels: Vec<&str> =
        published["curves"].as_array().unwrap().iter().filter_map(|c| c["label"].as_str()).collect();
    assert_eq!(
        labels,
        [
            "word tokens, dial training (protocol a)",
            "word tokens, one model per fixed λ (protocol b)",
            "char tokens, dial training (protocol a)",
            "char tokens, one model per fixed λ (protocol b)"
        ]
    );
    for curve in published["curves"].as_array().unwrap() {
        assert_eq!(curve["points"].as_array().map(Vec::len), Some(6), "{}", curve["label"]);
    }
    assert_eq!(published["figures"].as_array().map(Vec::len), Some(4));
    assert_eq!(published["claims"].as_array().map(Vec::len), Some(3));
    let markdown = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(markdown.contains("## 8. Published figures beside ours") && markdown.contains("| 7.18 |"));
    assert!(run.join("report-published.svg").is_file());
}

/// `pipelines/recruit_domains.yaml --quick` over the four shared corpora and WikiText-2 arriving twice:
/// one specialist per genuinely different domain and none for the repeat, and held-out documents routed
/// to the model that serves their domain.
#[test]
fn domain_recruitment_buys_one_specialist_per_new_domain_and_routes_held_out_documents() {
    for name in ["wikitext-2", "tinyshakespeare", "linux-kernel", "federalist"] {
        if shared(name).is_none() {
            return;
        }
    }
    let work = tempfile::tempdir().unwrap();
    let pipeline = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pipelines/recruit_domains.yaml");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ailla"))
        .args(["--threads", "2", "run"])
        .arg(&pipeline)
        .arg("--quick")
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let run = work.path().join("runs/recruit_domains-quick");
    let summary: ailla::recruit::domains::DomainsSummary =
        serde_json::from_str(&std::fs::read_to_string(run.join("recruitment.json")).unwrap()).unwrap();
    let recruited: Vec<&str> = summary.decisions.iter().filter(|d| d.recruited).map(|d| d.domain.as_str()).collect();
    assert_eq!(recruited, ["shakespeare", "linux", "federalist"], "{:#?}", summary.decisions);
    let repeat = summary.decisions.iter().find(|d| d.domain == "wikitext-again").unwrap();
    assert_eq!(repeat.assigned_model, "base-wikitext");
    for row in &summary.routing {
        assert!(row.accuracy >= 0.95, "{}: {:.1} % routed to its model", row.domain, 100.0 * row.accuracy);
    }
    for dl in &summary.description_length {
        assert!(dl.total_bits <= dl.without_this_recruitment_bits, "{dl:?}");
    }
    let markdown = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(markdown.contains("**recruited**") && markdown.contains("Routing of held-out documents"));
    // the router on a file: C source goes to the Linux specialist
    let text = std::fs::read_to_string(shared("linux-kernel").unwrap().join("test.txt")).unwrap();
    let document = work.path().join("document.c");
    std::fs::write(&document, &text[..4000]).unwrap();
    let routed = std::process::Command::new(env!("CARGO_BIN_EXE_ailla"))
        .arg("route")
        .arg(run.join("pool"))
        .arg("--text")
        .arg(&document)
        .arg("--json")
        .output()
        .unwrap();
    assert!(routed.status.success(), "{}", String::from_utf8_lossy(&routed.stderr));
    let decision: serde_json::Value = serde_json::from_slice(&routed.stdout).unwrap();
    assert_eq!(decision["chosen"], "specialist-linux");
    assert_eq!(decision["models"].as_array().map(Vec::len), Some(4));
}
