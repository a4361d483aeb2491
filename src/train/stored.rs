//! What a run stores for its report, so that a report is built from the run directory alone: it never
//! rereads a rules file or a corpus that may have changed (or gone) since the run.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::LocalityConfig;
use crate::data::Vocabulary;
use crate::engine::Model;
use crate::locality::{RuleSet, RuleSpec, RulesAt, RulesSource};

/// The file a run writes beside its summary.
pub const REPORT_INPUTS: &str = "report_inputs.json";

/// Positions of the attention example: short enough to read cell by cell.
const EXAMPLE_TOKENS: usize = 24;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ReportInputs {
    /// Where each rule was written and its text as written: name → (`file:line`, text).
    pub rule_sources: BTreeMap<String, (String, String)>,
    /// Rules that act only from or until a step: name → `from step N until step M`.
    pub schedules: BTreeMap<String, String>,
    /// The final model's attention on the start of the test split, last layer, head 0.
    pub attention: Option<AttentionSample>,
    /// The blocks in force at the last step, with their members as vocabulary entries (absent in runs
    /// stored before blocks were recorded).
    #[serde(default)]
    pub blocks: Vec<StoredBlock>,
}

/// A block as compiled against the run's vocabulary: what its words and patterns matched.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoredBlock {
    pub name: String,
    /// Every member, in token-id order.
    pub members: Vec<String>,
    pub anchors: Vec<String>,
    pub recruitable: bool,
}

/// The attention of one example sequence at λ = 0 and λ = 1, with the rule targets of each row.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttentionSample {
    /// The run it was taken from (its directory's name: the member of a pipeline).
    pub member: String,
    pub layer: usize,
    pub head: usize,
    pub tokens: Vec<String>,
    /// `weights[i][j]`, rows are queries.
    pub weights_lambda_0: Vec<Vec<f64>>,
    pub weights_lambda_1: Vec<Vec<f64>>,
    /// `T_i` of every row (empty where no rule covers it).
    pub targets: Vec<Vec<usize>>,
}

/// Where each rule of the run's rules sources is written, and its text.
fn rule_sources(locality: &LocalityConfig) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    let sources = std::iter::once(&locality.rules).chain(locality.injections.iter().map(|i| &i.rules));
    for source in sources {
        let loaded = match source {
            RulesSource::Bundled => crate::dsl::load_source(
                Path::new("rules/default.rules"),
                crate::locality::rules::BUNDLED_RULES.to_string(),
            ),
            RulesSource::File(path) => crate::dsl::load(path),
        };
        // a rule spec in YAML or JSON has no source text to show
        let Ok(loaded) = loaded else { continue };
        for (file, statement) in &loaded.statements {
            if let crate::dsl::syntax::Statement::Rule(rule) = statement {
                if let Ok(f) = loaded.files.get(*file) {
                    let line = f.source()[..rule.span.start].matches('\n').count() + 1;
                    let written = without_comments(&f.source()[rule.span.clone()]);
                    let text = written.split_whitespace().collect::<Vec<_>>().join(" ");
                    out.entry(rule.name.value.clone()).or_insert_with(|| (format!("{}:{line}", f.name()), text));
                }
            }
        }
    }
    out
}

/// `text` without its comments: `#` to the end of a line, outside quoted text. A rule's span runs up
/// to the next statement, so it holds the comments written above that statement too.
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let (mut quoted, mut escaped) = (false, false);
        for c in line.chars() {
            match c {
                '#' if !quoted => break,
                '"' if !escaped => quoted = !quoted,
                _ => {}
            }
            escaped = c == '\\' && !escaped;
            out.push(c);
        }
        out.push('\n');
    }
    out
}

fn schedules(spec: &RuleSpec) -> BTreeMap<String, String> {
    spec.rules
        .iter()
        .filter(|r| r.from_step.is_some() || r.until_step.is_some())
        .map(|r| {
            let from = r.from_step.map_or("the start".to_string(), |s| format!("step {s}"));
            let until = r.until_step.map_or(String::new(), |s| format!(" until step {s}"));
            (r.name.clone(), format!("from {from}{until}"))
        })
        .collect()
}

fn attention(
    member: &str,
    model: &Model<f32>,
    vocabulary: &Vocabulary,
    locality: &LocalityConfig,
    rules: &RuleSet,
    test_ids: &[u32],
) -> Option<AttentionSample> {
    let seq_len = EXAMPLE_TOKENS.min(model.config.ctx_len).min(test_ids.len());
    if seq_len == 0 {
        return None;
    }
    let tokens = &test_ids[..seq_len];
    let layers = model.config.n_layers;
    let (layer, head) = (layers - 1, 0);
    let at =
        |lambda: f64| RulesAt::new(rules, lambda, layers, locality.progressive_beta, locality.dial).without_penalty();
    let targets = at(0.0).targets(model, tokens, 1, seq_len);
    let weights_at = |lambda: f64| -> Vec<Vec<f64>> {
        let hook = at(lambda).hook(&targets);
        let cache = model.forward(tokens, 1, seq_len, &hook);
        let alpha = &cache.layers[layer].attention.weights[head];
        alpha.rows().into_iter().map(|r| r.iter().map(|&a| f64::from(a)).collect()).collect()
    };
    let rows = targets.at(layer, head, 0);
    Some(AttentionSample {
        member: member.to_string(),
        layer,
        head,
        tokens: tokens.iter().map(|&t| vocabulary.tokens[t as usize].clone()).collect(),
        weights_lambda_0: weights_at(0.0),
        weights_lambda_1: weights_at(1.0),
        targets: (0..seq_len).map(|i| rows.map_or(Vec::new(), |r| r.targets(i).collect())).collect(),
    })
}

/// What the report of a run with rules needs, from the run's final state: its model, the rules in
/// force at its last step, and the start of its test split.
pub fn collect(
    member: &str,
    model: &Model<f32>,
    vocabulary: &Vocabulary,
    locality: &LocalityConfig,
    spec: &RuleSpec,
    final_rules: &RuleSet,
    test_ids: &[u32],
) -> ReportInputs {
    ReportInputs {
        rule_sources: rule_sources(locality),
        schedules: schedules(spec),
        attention: attention(member, model, vocabulary, locality, final_rules, test_ids),
        blocks: final_rules
            .blocks
            .iter()
            .map(|b| {
                let names = |ids: &[u32]| -> Vec<String> {
                    ids.iter().filter_map(|&t| vocabulary.tokens.get(t as usize).cloned()).collect()
                };
                StoredBlock {
                    name: b.name.clone(),
                    members: names(&b.members),
                    anchors: names(&b.anchors),
                    recruitable: b.recruitable,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_as_written_leaves_out_the_comments_after_it() {
        let span = "rule \"bracket # closes\": pair ( and )\n\n# the next rule's comment\n  # and another\n";
        let text = without_comments(span).split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(text, "rule \"bracket # closes\": pair ( and )");
    }

    #[test]
    fn the_bundled_rules_as_written_hold_no_comment() {
        let locality: LocalityConfig =
            serde_json::from_value(serde_json::json!({ "rules": "bundled" })).expect("the bundled rules' settings");
        let sources = rule_sources(&locality);
        assert!(!sources.is_empty());
        for (name, (_, text)) in &sources {
            assert!(!text.contains('#'), "rule `{name}` as written holds a comment: {text}");
        }
    }
}
