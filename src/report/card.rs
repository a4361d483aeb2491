//! The audit card at the top of every report: what was built, from what, by whom, under which rules,
//! and whether each rule is met, in the order an auditor asks.

use super::*;
use crate::train::stored::StoredBlock;
use provenance::FileHash;

/// Members shown per block; a larger block shows this many, its count and the hash of the whole list.
pub const BLOCK_MEMBERS_SHOWN: usize = 24;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
pub struct AuditCard {
    /// The pipeline's `card` section; a missing field is "not stated" on the card.
    pub statement: crate::pipeline::CardSection,
    /// One model per group (runs of a group differ only in their seed; their first run's figures).
    pub models: Vec<ModelCard>,
    /// SHA-256 of every member's final model, `MEMBER/model.safetensors`, and of a domains run's pool
    /// models, `pool/FILE` (paths relative to the run directory).
    pub checkpoints: Vec<FileHash>,
    /// The blocks of the first group's rules as compiled against its vocabulary.
    pub blocks: Vec<BlockCard>,
    /// The first group's rules met (fidelity ≥ 1 − ε) at each λ.
    pub rules_met: Vec<RulesMet>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct ModelCard {
    pub group: String,
    /// `decoder-only transformer, 2 layers × 4 heads, d_model 32, d_ff 64, context 32, tied embeddings`.
    pub architecture: String,
    pub parameters: usize,
    pub steps_done: usize,
    pub steps_planned: usize,
    pub batch_size: usize,
    /// AdamW and its settings, in words.
    pub optimiser: String,
    pub learning_rate: f64,
    /// `margin μ 12 nats, temperature τ₁ 1, penalty ρ 0.5; λ per batch: …`; absent without rules.
    pub dial: Option<String>,
    pub epsilon: Option<f64>,
    pub tokenizer: String,
    pub vocab_size: usize,
    pub corpus: String,
    pub train_tokens: usize,
    pub valid_tokens: usize,
    pub test_tokens: usize,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct BlockCard {
    pub name: String,
    pub member_count: usize,
    /// The first [`BLOCK_MEMBERS_SHOWN`] members, in token-id order.
    pub members_shown: Vec<String>,
    /// SHA-256 of every member joined by newlines, in token-id order: the whole list, checkably.
    pub members_sha256: String,
    pub anchors: Vec<String>,
    pub recruitable: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct RulesMet {
    pub lambda: f64,
    pub met: usize,
    pub rules: usize,
}

/// The card's figures for one group, from its first run.
pub(super) fn model_card(label: &str, config: &crate::train::TrainConfig, summary: &TrainSummary) -> ModelCard {
    let m = &config.model;
    let o = &config.optim;
    let dial = config.locality.as_ref().map(|l| {
        // `{"uniform":{"low":0.0,"high":1.0}}` read aloud: `uniform: low = 0.0, high = 1.0`
        let schedule = serde_json::to_string(&l.schedule)
            .unwrap_or_default()
            .replace('"', "")
            .replace(":{", "\u{0}")
            .replace(':', " = ")
            .replace('\u{0}', ": ")
            .replace(['{', '}'], "")
            .replace(',', ", ");
        let beta = l.progressive_beta.map_or(String::new(), |b| format!(", progressive per layer β = {b}"));
        format!(
            "margin μ = {} nats, temperature τ₁ = {}, penalty ρ = {}; λ in training: {schedule}{beta}",
            l.dial.margin, l.dial.temperature, l.dial.penalty
        )
    });
    ModelCard {
        group: label.to_string(),
        architecture: format!(
            "decoder-only transformer, {} layers × {} heads, d_model {}, d_ff {}, context {}, {} embeddings",
            m.n_layers,
            m.n_heads,
            m.d_model,
            m.d_ff,
            m.ctx_len,
            if m.tied { "tied" } else { "untied" }
        ),
        parameters: summary.parameters,
        steps_done: summary.steps_done,
        steps_planned: summary.steps_planned,
        batch_size: config.batch_size,
        optimiser: format!(
            "AdamW (β₁ {}, β₂ {}, weight decay {}), warm-up {} steps then cosine to {}× the rate, gradient clip {}",
            o.beta1, o.beta2, o.weight_decay, o.warmup_steps, o.min_lr_ratio, o.grad_clip
        ),
        learning_rate: o.learning_rate,
        dial,
        epsilon: config.locality.as_ref().map(|l| l.epsilon),
        tokenizer: serde_json::to_string(&summary.tokenizer).unwrap_or_default().replace('"', ""),
        vocab_size: summary.vocab_size,
        corpus: match &config.corpus {
            crate::train::CorpusSource::Bundled { seed } => format!("bundled generated corpus, seed {seed}"),
            crate::train::CorpusSource::Planted { seed } => {
                format!("bundled generated corpus with planted allergens, seed {seed}")
            }
            crate::train::CorpusSource::Directory(dir) => format!("directory {}", dir.display()),
        },
        train_tokens: summary.train_tokens,
        valid_tokens: summary.valid.tokens,
        test_tokens: summary.test.tokens,
    }
}

pub(super) fn block_cards(blocks: &[StoredBlock]) -> Vec<BlockCard> {
    blocks
        .iter()
        .map(|b| BlockCard {
            name: b.name.clone(),
            member_count: b.members.len(),
            members_shown: b.members.iter().take(BLOCK_MEMBERS_SHOWN).cloned().collect(),
            members_sha256: provenance::sha256_hex(b.members.join("\n").as_bytes()),
            anchors: b.anchors.clone(),
            recruitable: b.recruitable,
        })
        .collect()
}

/// SHA-256 of every member's final model that is there, and of every model of a domains run's pool
/// (`pool/`, as its manifest lists them).
pub(super) fn checkpoint_hashes(run_dir: &Path, members: &[crate::pipeline::Member]) -> Result<Vec<FileHash>> {
    let mut files: Vec<String> = members.iter().map(|m| format!("{}/model.safetensors", m.name)).collect();
    let manifest = run_dir.join("pool").join(crate::recruit::domains::MANIFEST);
    if manifest.is_file() {
        let manifest: crate::recruit::domains::Manifest = super::build::read_json(&manifest)?;
        files.extend(manifest.models.iter().map(|m| format!("pool/{}", m.file)));
    }
    let mut out = Vec::new();
    for file in files {
        let path = run_dir.join(&file);
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        out.push(FileHash { path: file, sha256: provenance::sha256_hex(&bytes), bytes: Some(bytes.len() as u64) });
    }
    Ok(out)
}

/// How many of the group's rules are met at each λ.
pub(super) fn rules_met(group: &Group) -> Vec<RulesMet> {
    group
        .dial
        .iter()
        .enumerate()
        .map(|(i, row)| RulesMet {
            lambda: row.lambda,
            met: group.rules.iter().filter(|r| r.met_by_lambda.get(i).copied().unwrap_or(false)).count(),
            rules: group.rules.len(),
        })
        .collect()
}

/// The settings that set each group apart: the leaves of the groups' configurations (seeds left
/// out) whose values differ between groups, as `field = value`; at most three per group, then `…`.
pub(super) fn group_labels(configs: &[serde_json::Value]) -> Vec<String> {
    fn leaves(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    leaves(&path, v, out);
                }
            }
            other => out.push((prefix.to_string(), other.to_string().replace('"', ""))),
        }
    }
    if configs.len() < 2 {
        return vec!["all runs".to_string(); configs.len()];
    }
    let flat: Vec<Vec<(String, String)>> = configs
        .iter()
        .map(|c| {
            let mut out = Vec::new();
            leaves("", c, &mut out);
            out
        })
        .collect();
    let mut paths: Vec<String> = flat.iter().flat_map(|f| f.iter().map(|(p, _)| p.clone())).collect();
    paths.sort();
    paths.dedup();
    let value = |f: &[(String, String)], path: &str| {
        f.iter().find(|(p, _)| p == path).map_or("absent".to_string(), |(_, v)| v.clone())
    };
    let differing: Vec<&String> =
        paths.iter().filter(|p| flat.iter().any(|f| value(f, p) != value(&flat[0], p))).collect();
    flat.iter()
        .enumerate()
        .map(|(index, f)| {
            let mut parts: Vec<String> = differing.iter().take(3).map(|p| format!("{p} = {}", value(f, p))).collect();
            if differing.len() > 3 {
                parts.push("…".into());
            }
            if parts.is_empty() {
                format!("group {}", index + 1)
            } else {
                parts.join(", ")
            }
        })
        .collect()
}

/// `n` with a comma every three digits: `1,234,567`.
pub fn thousands(n: usize) -> String {
    crate::dsl::syntax::thousands(n as i128)
}

/// The anchor GitHub and the HTML report give a heading: lower case, spaces to hyphens, punctuation
/// other than `-` and `_` dropped.
pub fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The SHA-256 of a report's content as [`Report::report_sha256`] defines it.
pub fn content_sha256(report: &Report) -> Result<String> {
    let mut blank = report.clone();
    blank.report_sha256 = String::new();
    Ok(provenance::sha256_hex(to_json(&blank)?.as_bytes()))
}

/// The SHA-256 of a `report.json` as written, by the definition of [`Report::report_sha256`]: the
/// file's bytes with that field's value emptied. `None` when the file has no such line.
pub fn content_sha256_of_text(text: &str) -> Option<String> {
    let key = "\n  \"report_sha256\": \"";
    let start = text.find(key)? + key.len();
    let end = start + text[start..].find('"')?;
    Some(provenance::sha256_hex(format!("{}{}", &text[..start], &text[end..]).as_bytes()))
}

/// `report.json`'s exact text.
pub fn to_json(report: &Report) -> Result<String> {
    Ok(serde_json::to_string_pretty(report).map_err(|e| Error::Numeric(e.to_string()))? + "\n")
}

/// `text` safe in a Markdown table cell and in the HTML made from it: no raw HTML, no formatting, no
/// column break, one line.
pub fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' | '\r' | '\t' => out.push(' '),
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// `text` as a Markdown code span that holds it whatever it contains.
pub fn code(text: &str) -> String {
    let escaped = text.replace('|', "\\|").replace(['\n', '\r'], " ");
    let fence = if escaped.contains('`') { "`` " } else { "`" };
    let close = if escaped.contains('`') { " ``" } else { "`" };
    format!("{fence}{escaped}{close}")
}

fn stated(value: &Option<String>) -> String {
    value.as_deref().map_or("*not stated*".to_string(), cell)
}

/// The one-line verdict: how many of the headline group's rules are met at each λ.
pub fn verdict_line(report: &Report) -> String {
    let Some(group) = report.groups.first() else {
        return "No model of this report was trained with rules, so there are no rule verdicts.".to_string();
    };
    let (Some(epsilon), false) = (group.epsilon, report.card.rules_met.is_empty()) else {
        return format!("Group `{}` has no rules, so no rule verdicts.", cell(&group.label));
    };
    let counts: Vec<String> =
        report.card.rules_met.iter().map(|m| format!("{} of {} at λ = {:.2}", m.met, m.rules, m.lambda)).collect();
    format!(
        "**Rules met** (mean pointer fidelity ≥ 1 − ε = {:.2}, ε = {epsilon}) in group `{}`: {}.",
        1.0 - epsilon,
        cell(&group.label),
        counts.join("; ")
    )
}

/// The audit card as Markdown: the first thing in `report.md` and `report.html`.
pub fn card_markdown(report: &Report) -> String {
    let mut s = String::new();
    let card = &report.card;
    let p = &report.provenance;
    let _ = writeln!(
        s,
        "## Audit card
"
    );
    let _ = writeln!(
        s,
        "{}
",
        verdict_line(report)
    );
    let _ = writeln!(
        s,
        "| | |
|---|---|"
    );
    match &p.invocation {
        Some(run) => {
            let _ = writeln!(s, "| run id | {} |", code(&run.run_id));
            let _ = writeln!(s, "| started (UTC) | {} |", cell(&run.started_utc));
            let _ = writeln!(s, "| host | {} |", cell(&run.host));
            let _ = writeln!(s, "| operator | {} (from {}) |", cell(&run.operator), cell(&run.operator_source));
            let _ = writeln!(s, "| command | {} |", code(&run.command_line));
        }
        None => {
            let _ = writeln!(s, "| run id | *not recorded (a run from before ailla recorded it)* |");
        }
    }
    let _ = writeln!(s, "| ailla | {} {} |", cell(&p.ailla_version), markdown::commit_cell(&p.git_commit));
    let _ = writeln!(
        s,
        "| report SHA-256 | `{}` (of `report.json` with this value emptied; README, \"Reports\") |",
        report.report_sha256
    );
    let _ = writeln!(s, "| intended use | {} |", stated(&card.statement.intended_use));
    let _ = writeln!(s, "| limitations | {} |", stated(&card.statement.limitations));
    let _ = writeln!(s, "| owner | {} |\n", stated(&card.statement.owner));

    let _ = writeln!(s, "### Model\n");
    if card.models.is_empty() && report.domain_recruitment.is_some() {
        let _ = writeln!(
            s,
            "A pool of specialised models (METHOD §8): their checkpoints are below, their decisions in section 6."
        );
    }
    for m in &card.models {
        let _ = writeln!(
            s,
            "- **{}**: {}; {} parameters; {} of {} steps, batch {}; {}, learning rate {}; {}; {}.",
            cell(&m.group),
            m.architecture,
            thousands(m.parameters),
            thousands(m.steps_done),
            thousands(m.steps_planned),
            m.batch_size,
            m.optimiser,
            m.learning_rate,
            m.dial.as_deref().map_or("no rules, no dial".to_string(), |d| format!("dial: {}", cell(d))),
            m.epsilon.map_or("no certificates".to_string(), |e| format!("ε = {e}"))
        );
    }
    let _ = writeln!(s, "\n### Data\n");
    for m in &card.models {
        let _ = writeln!(
            s,
            "- **{}**: {}; tokenizer {}, vocabulary {}; tokens: train {}, validation {}, test {}.",
            cell(&m.group),
            cell(&m.corpus),
            m.tokenizer,
            thousands(m.vocab_size),
            thousands(m.train_tokens),
            thousands(m.valid_tokens),
            thousands(m.test_tokens)
        );
    }
    let files = |s: &mut String, title: &str, list: &[FileHash]| {
        if list.is_empty() {
            return;
        }
        let _ = writeln!(s, "\n| {title} | bytes | SHA-256 |\n|---|---:|---|");
        for f in list {
            let bytes = f.bytes.map_or("–".to_string(), |b| thousands(b as usize));
            let _ = writeln!(s, "| {} | {bytes} | `{}` |", cell(&f.path), f.sha256);
        }
    };
    files(&mut s, "data file", &p.data);
    let _ = writeln!(s, "\n### Checkpoints");
    if card.checkpoints.is_empty() {
        let _ = writeln!(s, "\nNo member's final model is in the run directory.");
    }
    files(&mut s, "checkpoint", &card.checkpoints);
    let _ = writeln!(s, "\n### Blocks and rules");
    if p.rules.is_empty() && card.blocks.is_empty() {
        let _ = writeln!(s, "\nNo rules: no model of this report was trained with a rules file.");
    }
    files(&mut s, "rules file", &p.rules);
    if !card.blocks.is_empty() {
        let _ = writeln!(s, "\n| block | members | anchors |\n|---|---|---|");
        for b in &card.blocks {
            let shown: Vec<String> = b.members_shown.iter().map(|m| code(m)).collect();
            let members = if b.member_count > shown.len() {
                format!(
                    "{} (first {} of {}; SHA-256 of all, one per line: `{}`)",
                    shown.join(" "),
                    shown.len(),
                    thousands(b.member_count),
                    b.members_sha256
                )
            } else {
                format!("{} ({})", shown.join(" "), b.member_count)
            };
            let anchors: Vec<String> = b.anchors.iter().map(|a| code(a)).collect();
            let kind = if b.recruitable { " (recruitable)" } else { "" };
            let anchors = if anchors.is_empty() { "–".to_string() } else { anchors.join(" ") };
            let _ = writeln!(s, "| {}{kind} | {members} | {anchors} |", cell(&b.name));
        }
    }
    if let Some(group) = report.groups.first().filter(|g| !g.rules.is_empty()) {
        let target = 1.0 - group.epsilon.unwrap_or(0.0);
        let lambdas: Vec<String> = group.dial.iter().map(|r| format!("λ = {:.2}", r.lambda)).collect();
        let _ = writeln!(
            s,
            "\nEach rule of group `{}` against 1 − ε = {target:.2}: its mean pointer fidelity at each λ, and whether that meets it.\n",
            cell(&group.label)
        );
        let _ =
            writeln!(s, "| rule | as written | {} |\n|---|---|{}", lambdas.join(" | "), "---:|".repeat(lambdas.len()));
        for rule in &group.rules {
            let verdicts: Vec<String> = rule
                .fidelity_by_lambda
                .iter()
                .zip(&rule.met_by_lambda)
                .map(|(&(_, f), &met)| {
                    let value = if f.is_finite() { format!("{f:.4}") } else { "–".to_string() };
                    format!("{value} {}", if met { "met" } else { "**not met**" })
                })
                .collect();
            let text = rule.text.as_deref().map_or("(implicit own-block rule)".to_string(), code);
            let _ = writeln!(s, "| {} | {text} | {} |", cell(&rule.name), verdicts.join(" | "));
        }
    }
    let _ = writeln!(s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_and_slugs_read_as_intended() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(1234), "1,234");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(slug("3. Locality across the dial"), "3-locality-across-the-dial");
        assert_eq!(slug("Audit card"), "audit-card");
    }

    #[test]
    fn groups_are_named_by_the_settings_that_differ() {
        let a = serde_json::json!({ "steps": 40, "recruitment": { "margin_bits": 16, "k": 2 } });
        let b = serde_json::json!({ "steps": 40, "recruitment": { "margin_bits": 32, "k": 2 } });
        assert_eq!(group_labels(&[a.clone(), b]), ["recruitment.margin_bits = 16", "recruitment.margin_bits = 32"]);
        assert_eq!(group_labels(&[a]), ["all runs"]);
    }
}
