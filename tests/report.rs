//! Reports: snapshot-tested form, byte-identical rebuilds, and provenance hashes.

use std::path::Path;
use std::process::Command;

mod common;
use common::numbers::{assert_numbers, split_json, split_text, Number, Tolerance};

/// Runs ailla in `dir`, so that the pipeline names its files by relative paths and its bytes (and so
/// its hash in the report) are the same on every machine.
fn ailla(dir: &Path, args: &[&str]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_ailla")).args(args).current_dir(dir).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    output
}

/// The report's card for [`common::TINY_PIPELINE`], appended to it.
const CARD: &str = "\
card:
  intended_use: a test of the report's form; not for any decision
  owner: ailla's tests
";

/// The operator the test runs as, through `--operator`.
const OPERATOR: &str = "A. Auditor";

fn write_pipeline(dir: &Path) {
    std::fs::write(dir.join("tiny.yaml"), format!("{}{CARD}", common::TINY_PIPELINE)).unwrap();
}

fn run(dir: &Path) -> (String, String) {
    let rules = dir.join("default.rules");
    if !rules.exists() {
        std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/default.rules"), &rules).unwrap();
    }
    write_pipeline(dir);
    // the second call replaces the first run on purpose
    ailla(dir, &["--threads", "2", "run", "tiny.yaml", "--force", "--operator", OPERATOR]);
    let read = |name: &str| std::fs::read_to_string(dir.join("run").join(name)).unwrap();
    (read("report.md"), read("report.json"))
}

/// The fields that legitimately differ between identical runs (and the temporary directory and the
/// commit, which differ between machines and commits) replaced by placeholders.
fn redact_markdown(text: &str, dir: &Path) -> String {
    text.replace(&dir.display().to_string(), "<dir>")
        .lines()
        .map(|line| {
            if let Some(row) = common::VOLATILE_MARKDOWN_ROWS.iter().find(|row| line.starts_with(*row)) {
                format!("{row} <redacted> |")
            } else if line.contains("/model.safetensors |") {
                // a model's bytes, and so its hash, move with the CPU's last bits
                line.split(" | ").take(2).collect::<Vec<_>>().join(" | ") + " | <this machine's model> |"
            } else if line.starts_with("| ailla |") {
                "| ailla | <version and commit> |".to_string()
            } else if let Some(key) =
                ["| CPU |", "| kernels |", "| products |", "| BLAS |"].into_iter().find(|k| line.starts_with(k))
            {
                format!("{key} <this machine> |")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn redact_json(text: &str, dir: &Path) -> serde_json::Value {
    let mut value: serde_json::Value =
        serde_json::from_str(&text.replace(&dir.display().to_string(), "<dir>")).unwrap();
    value["provenance"]["wall_time_seconds"] = serde_json::json!("<redacted>");
    value["provenance"]["peak_memory_mib"] = serde_json::json!("<redacted>");
    value["report_sha256"] = serde_json::json!("<redacted>");
    // the invocation's keys are the form, their values this run's
    if let Some(invocation) = value["provenance"]["invocation"].as_object_mut() {
        invocation.values_mut().for_each(|v| *v = serde_json::json!("<redacted>"));
    }
    if let Some(checkpoints) = value["card"]["checkpoints"].as_array_mut() {
        for checkpoint in checkpoints {
            checkpoint["sha256"] = serde_json::json!("<this machine's model>");
        }
    }
    value["provenance"]["git_commit"] = serde_json::json!("<commit>");
    value["provenance"]["ailla_version"] = serde_json::json!("<version>");
    // the machine's own facts: their keys are the form, their values this machine's
    if let Some(numerics) = value["provenance"]["numerics"].as_object_mut() {
        numerics.values_mut().for_each(|v| *v = serde_json::json!("<this machine>"));
    }
    value
}

/// How far a figure of this report may move between CPUs (`tests/common/numbers.rs` says why it moves
/// at all). Measured on this 40-step, two-seed run: OpenBLAS's Zen and Haswell kernels give the same
/// bits; its SandyBridge and Nehalem kernels move point figures by at most 3.4e-8 relative and interval
/// half-widths by 1.7e-6 relative (6.6e-5 absolute, on a perplexity); between an AVX-512 (SkylakeX)
/// and an AVX2 machine one hit-rate half-width moved by 2e-4 (0.3172 → 0.3174). The bounds below are
/// 5–50 times the largest of these, and still far below any difference that means something.
fn cross_cpu(number: &Number) -> Tolerance {
    // Half-widths of 95 % intervals over two seeds are 12.7 × the seeds' half-difference (Student t,
    // one degree of freedom), so they carry 12.7 times a seed's own drift.
    let interval = number.context.trim_end().ends_with('±') || number.context.ends_with(".ci95");
    if interval {
        Tolerance { absolute: 1e-2, relative: 1e-2 }
    } else {
        Tolerance { absolute: 1e-3, relative: 1e-3 }
    }
}

#[test]
fn reports_keep_their_form_rebuild_identically_and_hash_their_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let (markdown, json) = run(dir.path());
    for section in [
        "## 1. Summary",
        "## 2. Provenance",
        "## 3. Locality",
        "## 4. Rules",
        "## 5. Certificates",
        "## 6. Recruitment",
        "## 7. Training curves",
    ] {
        assert!(markdown.contains(section), "{section} missing");
    }
    let (form, numbers) = split_text(&redact_markdown(&markdown, dir.path()));
    insta::assert_snapshot!("tiny_report_md", form);
    assert_numbers("tiny_report_md", &numbers, cross_cpu);
    let (form, numbers) = split_json(&redact_json(&json, dir.path()));
    insta::assert_snapshot!("tiny_report_json", serde_json::to_string_pretty(&form).unwrap());
    assert_numbers("tiny_report_json", &numbers, cross_cpu);

    // `ailla report` rebuilds both files byte for byte from what the run stored
    let run_dir = dir.path().join("run");
    ailla(dir.path(), &["report", "run"]);
    assert_eq!(std::fs::read_to_string(run_dir.join("report.md")).unwrap(), markdown);
    assert_eq!(std::fs::read_to_string(run_dir.join("report.json")).unwrap(), json);
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    // from the run directory alone: the rules file gone (and the corpus, which is the bundled
    // generator's, never read), the same bytes
    let rules_path = dir.path().join("default.rules");
    let rules_text = std::fs::read_to_string(&rules_path).unwrap();
    std::fs::remove_file(&rules_path).unwrap();
    ailla(dir.path(), &["report", "run"]);
    assert_eq!(std::fs::read_to_string(run_dir.join("report.html")).unwrap(), html);
    assert_eq!(std::fs::read_to_string(run_dir.join("report.md")).unwrap(), markdown);
    std::fs::write(&rules_path, rules_text).unwrap();
    check_html(&html);
    for figure in ["report-entropy.svg", "report-fidelity.svg", "report-perplexity.svg", "report-training.svg"] {
        let svg = std::fs::read_to_string(run_dir.join(figure)).unwrap();
        assert!(html.contains(&svg), "{figure} is not inlined in the HTML");
    }
    render_in_chromium(&run_dir.join("report.html"));

    // the hashes are sha256sum's
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    check_audit_card(&markdown, &json, &report, &run_dir);
    // the numerical environment is named: CPU, kernel path, BLAS library, version and kernel
    let numerics = &report["provenance"]["numerics"];
    for key in ["cpu", "simd_path", "blas", "blas_version", "blas_core", "blas_core_detected", "blas_config"] {
        let value = numerics[key].as_str().unwrap_or_default();
        assert!(!value.is_empty() && value != "unknown", "provenance.numerics.{key} is {value:?}");
    }
    assert!(markdown.contains("| BLAS | OpenBLAS "), "the markdown provenance does not name the BLAS");
    let rules_path = dir.path().join("default.rules");
    let sha256sum = Command::new("sha256sum").arg(&rules_path).output().unwrap();
    let expected = String::from_utf8_lossy(&sha256sum.stdout).split_whitespace().next().unwrap_or_default().to_string();
    let listed = report["provenance"]["rules"][0]["sha256"].as_str().unwrap();
    assert_eq!(listed, expected);

    // one byte of a comment changes the rules' hash and nothing else
    let text = std::fs::read_to_string(&rules_path).unwrap();
    std::fs::write(&rules_path, text.replacen("# Rules", "# rules", 1)).unwrap();
    let (changed, _) = run(dir.path());
    let differing: Vec<(&str, &str)> =
        markdown.lines().zip(changed.lines()).filter(|(a, b)| a != b && !common::volatile_markdown_row(a)).collect();
    // the rules file's row in the audit card and in the provenance
    assert_eq!(differing.len(), 2, "{differing:#?}");
    assert!(differing.iter().all(|(a, _)| a.contains("default.rules") && a.contains('`')), "{differing:#?}");
}

/// The audit card comes first and says who ran what, when, from which inputs, with which result; the
/// report's hash of itself is the one its definition gives, and the checkpoints' are sha256sum's.
fn check_audit_card(markdown: &str, json: &str, report: &serde_json::Value, run_dir: &Path) {
    let card = markdown.find("## Audit card").expect("no audit card");
    assert!(card < markdown.find("## 1. Summary").unwrap(), "the audit card is not first");
    let invocation = &report["provenance"]["invocation"];
    assert_eq!(invocation["operator"], OPERATOR);
    assert_eq!(invocation["operator_source"], "--operator");
    let run_id = invocation["run_id"].as_str().unwrap();
    assert!(run_id.starts_with("tiny-") && markdown.contains(run_id), "{run_id}");
    let started = invocation["started_utc"].as_str().unwrap();
    assert!(started.len() == 20 && started.ends_with('Z'), "{started}");
    assert!(invocation["command_line"].as_str().unwrap().contains("run tiny.yaml --force --operator 'A. Auditor'"));
    for row in
        ["| run id |", "| started (UTC) |", "| host |", "| operator | A. Auditor (from --operator) |", "| command |"]
    {
        assert!(markdown.contains(row), "{row} missing from the card");
    }
    assert!(markdown.contains("| intended use | a test of the report's form; not for any decision |"));
    assert!(markdown.contains("| limitations | *not stated* |"));
    assert!(markdown.contains("| owner | ailla's tests |"));
    // the report's own hash: report.json with the value emptied
    let stated = report["report_sha256"].as_str().unwrap();
    assert_eq!(ailla::report::card::content_sha256_of_text(json).as_deref(), Some(stated));
    let blank = json.replacen(stated, "", 1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("blank.json"), &blank).unwrap();
    let sha256sum = Command::new("sha256sum").arg(dir.path().join("blank.json")).output().unwrap();
    assert!(String::from_utf8_lossy(&sha256sum.stdout).starts_with(stated));
    assert!(markdown.contains(&format!("| report SHA-256 | `{stated}`")));
    // every member's final model, hashed as sha256sum does
    let checkpoints = report["card"]["checkpoints"].as_array().unwrap();
    assert_eq!(checkpoints.len(), 2);
    for checkpoint in checkpoints {
        let path = run_dir.join(checkpoint["path"].as_str().unwrap());
        let out = Command::new("sha256sum").arg(&path).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(checkpoint["sha256"].as_str().unwrap()));
    }
    // one verdict per rule and λ, against 1 − ε, and a summary that counts them
    let group = &report["groups"][0];
    let epsilon = group["epsilon"].as_f64().unwrap();
    for rule in group["rules"].as_array().unwrap() {
        let verdicts = rule["met_by_lambda"].as_array().unwrap();
        let fidelity = rule["fidelity_by_lambda"].as_array().unwrap();
        assert_eq!(verdicts.len(), fidelity.len());
        for (met, point) in verdicts.iter().zip(fidelity) {
            let f = point[1].as_f64().unwrap_or(f64::NAN);
            assert_eq!(met.as_bool().unwrap(), f >= 1.0 - epsilon, "{rule}");
        }
    }
    assert!(markdown.contains("**Rules met** (mean pointer fidelity ≥ 1 − ε = 0.95, ε = 0.05)"));
    assert!(!markdown.contains("all held"), "the summary still reads as if everything passed");
    // blocks with their members, model and data facts
    let blocks = report["card"]["blocks"].as_array().unwrap();
    assert!(!blocks.is_empty() && blocks.iter().all(|b| b["member_count"].as_u64().unwrap() > 0));
    let model = &report["card"]["models"][0];
    assert!(model["parameters"].as_u64().unwrap() > 1000 && model["steps_done"] == 40);
    assert!(model["train_tokens"].as_u64().unwrap() > 0 && model["learning_rate"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_committed_json_schema_is_the_one_the_types_generate() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/report/report.schema.json");
    let generated = ailla::report::json_schema();
    if std::env::var_os("AILLA_WRITE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).expect("src/report/report.schema.json is committed");
    assert_eq!(committed, generated, "regenerate it with AILLA_WRITE_SCHEMA=1 cargo test --test report");
    let schema: serde_json::Value = serde_json::from_str(&committed).unwrap();
    for key in ["schema_version", "provenance", "groups", "resolved_pipeline"] {
        assert!(schema["properties"].get(key).is_some(), "{key} missing from the schema");
    }
}

/// Every section is there, nothing is fetched, and every element that opens closes, in order.
fn check_html(html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>"));
    for section in [
        "1. Summary",
        "2. Provenance",
        "3. Locality across the dial",
        "4. Rules",
        "5. Certificates",
        "6. Recruitment",
        "7. Training curves",
    ] {
        assert!(html.contains(&format!(">{section}</h2>")), "{section} missing from the HTML");
    }
    assert!(!html.contains("<script") && !html.contains("src=\"http") && !html.contains("href=\"http"));
    let void = ["meta", "br", "hr", "img", "input", "link"];
    let mut open: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        let Some(end) = rest[start..].find('>') else { panic!("unclosed tag near {}", &rest[start..]) };
        let tag = &rest[start + 1..start + end];
        rest = &rest[start + end + 1..];
        if tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        let name: String = tag.trim_start_matches('/').chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        if void.contains(&name.as_str()) {
            continue;
        }
        if tag.starts_with('/') {
            assert_eq!(open.pop().as_deref(), Some(name.as_str()), "</{name}> closes the wrong element");
        } else {
            open.push(name);
        }
    }
    assert!(open.is_empty(), "never closed: {open:?}");
}

/// The browser of the Chromium tests: Debian's package (`.ci/install-browser` installs it).
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// Headless Chromium on `url` with `args`, each call with a profile of its own; its stdout.
fn headless(browser: &str, args: &[&str], url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    assert!(!String::from_utf8_lossy(&output.stderr).contains("Uncaught"), "errors while rendering");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Measures the report's layout from inside it: with `#print=1` the report's print rules are made
/// unconditional first (a page cannot be put in print media from the command line). It reports the
/// page's width against the viewport's, the first elements (outside the tables' scrolling wrappers)
/// that reach past the viewport, and where the audit card and its run-id row are; to its parent frame,
/// which writes it into the DOM that `--dump-dom` prints.
const LAYOUT_PROBE: &str = include_str!("fixtures/report-layout-probe.js");

/// Opens the report in headless Chromium and checks that it renders (the DOM comes back with the
/// report's title and figures), that nothing reaches past the viewport at 1,400 px, at 420 px (a
/// phone) or on an A4 page (703 px between the margins), that the audit card and its run id are on
/// the first screen, and that it prints to a PDF of several pages. Skipped, saying so, without Chromium.
fn render_in_chromium(path: &Path) {
    let Some(browser) = chromium() else {
        eprintln!("skipped the Chromium checks: no chromium on this machine (bash .ci/install-browser installs it)");
        return;
    };
    let url = |p: &Path| format!("file://{}", p.canonicalize().unwrap().display());
    let dom = headless(browser, &["--dump-dom"], &url(path));
    assert!(dom.contains("ailla report: tiny") && dom.matches("<svg").count() >= 4, "the report did not render");

    let dir = tempfile::tempdir().unwrap();
    let html = std::fs::read_to_string(path).unwrap();
    let probe = html.replacen("</body>", &format!("<script>{LAYOUT_PROBE}</script></body>"), 1);
    std::fs::write(dir.path().join("probe.html"), probe).unwrap();
    // Chromium's headless window is at least 500 px wide, so the report is measured in a frame of the
    // width wanted
    for (width, height, print) in [(1400, 900, 0), (420, 800, 0), (703, 1000, 1)] {
        let harness = format!(
            "<!DOCTYPE html><html><body style=\"margin:0\"><iframe src=\"probe.html#print={print}\" \
             style=\"border:0;width:{width}px;height:{height}px\"></iframe><script>addEventListener('message', \
             function (e) {{ var p = document.createElement('pre'); p.id = 'layout-check'; p.textContent = e.data; \
             document.body.appendChild(p); }});</script></body></html>"
        );
        let harness_path = dir.path().join("harness.html");
        std::fs::write(&harness_path, harness).unwrap();
        let dom = headless(
            browser,
            &["--window-size=1500,1100", "--virtual-time-budget=5000", "--dump-dom"],
            &url(&harness_path),
        );
        let at = dom.find("<pre id=\"layout-check\">").unwrap_or_else(|| panic!("no layout measured at {width} px"));
        let text = &dom[at + "<pre id=\"layout-check\">".len()..];
        let text = text[..text.find("</pre>").unwrap()].replace("&amp;", "&");
        let layout: serde_json::Value = serde_json::from_str(&text).unwrap();
        let view = if print == 1 { "print".to_string() } else { format!("{width} px") };
        assert!(
            layout["scroll_width"].as_f64() <= layout["client_width"].as_f64()
                && layout["overflowing"].as_array().is_some_and(Vec::is_empty),
            "the report overflows the viewport at {view}: {layout}"
        );
        let first_screen = f64::from(height);
        assert!(
            layout["card_top"].as_f64().is_some_and(|t| t < first_screen),
            "no audit card on the first screen at {view}: {layout}"
        );
        assert!(
            layout["run_id_bottom"].as_f64().is_some_and(|b| b < first_screen),
            "the card's run id is not on the first screen at {view}: {layout}"
        );
    }
    let pdf = dir.path().join("report.pdf");
    headless(browser, &[&format!("--print-to-pdf={}", pdf.display()), "--no-pdf-header-footer"], &url(path));
    let bytes = std::fs::read(&pdf).unwrap();
    let pages = regex::bytes::Regex::new(r"/Type\s*/Page[^s]").unwrap().find_iter(&bytes).count();
    assert!(pages >= 2, "the report printed to {pages} page(s)");
}

#[test]
fn decimal_numbers_leave_the_form_and_everything_else_stays() {
    let text = "| 0.50 | 2.903 ± 0.027 | <0.0001 | -1.5e-3 |\nailla 0.1.0, sha `637b4af9.12`, 2680 rows, step 40, F@1.0, ends 0.25.\n";
    let (form, numbers) = split_text(text);
    assert_eq!(
        form,
        "| {f} | {f} ± {f} | <{f} | {f} |\nailla 0.1.0, sha `637b4af9.12`, 2680 rows, step 40, F@{f}, ends {f}.\n"
    );
    let values: Vec<f64> = numbers.iter().map(|n| n.value).collect();
    assert_eq!(values, [0.5, 2.903, 0.027, 0.0001, -1.5e-3, 1.0, 0.25]);
    assert_eq!(numbers[2].at, "1:18");
    let tolerance = Tolerance { absolute: 1e-3, relative: 0.0 };
    assert!(tolerance.admits(2.9035, 2.903) && !tolerance.admits(2.905, 2.903) && !tolerance.admits(f64::NAN, 1.0));
    let (form, numbers) = split_json(&serde_json::json!({ "a": [1, 0.5], "b": { "ci95": 2.25 } }));
    assert_eq!(form, serde_json::json!({ "a": [1, "{f}"], "b": { "ci95": "{f}" } }));
    assert_eq!(numbers.iter().map(|n| n.at.as_str()).collect::<Vec<_>>(), ["a[1]", "b.ci95"]);
}
