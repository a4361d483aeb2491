//! Hierarchical recruitment of specialised models (METHOD §8) and the router that serves the pool.
//!
//! One vocabulary is built over every domain's training text, so that code lengths are comparable
//! across models and domains. A base model is trained on the first domain. For every other domain `S`,
//! in order:
//!
//! ```text
//! best    = argmin_k L(S | M_k)                   over the pool
//! control = best, trained `specialist_steps` more on the data it was trained on
//! new     = best, fine-tuned `specialist_steps` on S
//! recruit ⇔ L(S | control) − L(S | new) > cost(new) = (P/2)·log2 N_S   (or P · bits_per_parameter)
//! ```
//!
//! `L(S | M)` is the whole domain's code length, estimated as `N_S` (tokens of S's training split) times
//! the bits per token that `M` spends on a held-out sample of S (its validation split). The control
//! makes the comparison credit the domain rather than the extra training steps, as block recruitment
//! does (§7). A domain that recruits nothing is served by the model that was best on it.
//!
//! The router sends a document to the pool model with the smallest code length on its first `k` tokens.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Checkpoint};
use crate::config::{CorpusSource, ModelShape};
use crate::data::{TokenizerKind, Vocabulary};
use crate::engine::optim::{AdamW, OptimConfig};
use crate::engine::Model;
use crate::locality::score::evaluate;
use crate::locality::Conditions;
use crate::progress::Progress;
use crate::step::{train_step, Batches, NonFinite, StepPlan};
use crate::{Error, Result};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DomainSource {
    pub name: String,
    /// `{ directory: PATH }` (train/valid/test files, or one text file split 90/5/5 % by lines).
    pub corpus: CorpusSource,
    /// For a one-file corpus: keep only lines `[first, last]` (1-based), before splitting.
    #[serde(default)]
    pub lines: Option<(usize, usize)>,
}

impl DomainSource {
    pub fn load(&self) -> Result<crate::data::Splits> {
        match (&self.corpus, self.lines) {
            (CorpusSource::Directory(dir), Some(range)) => {
                let file = crate::data::corpus::single_text_file(dir).ok_or_else(|| Error::Corpus {
                    path: dir.clone(),
                    message: format!("domain `{}` names `lines`, which needs a directory of one text file", self.name),
                })?;
                let text = crate::data::corpus::read_text(&file)?;
                crate::data::corpus::split_text(&file, &text, Some(range))
            }
            _ => self.corpus.load(),
        }
    }
}

fn default_char() -> TokenizerKind {
    TokenizerKind::Char
}
fn default_measure_tokens() -> usize {
    32_768
}
fn default_router_tokens() -> usize {
    256
}
fn default_documents() -> usize {
    40
}
fn default_document_tokens() -> usize {
    1024
}

/// A pipeline's `domains:` section.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DomainsConfig {
    /// The domains in the order they arrive; the first trains the base model.
    pub sources: Vec<DomainSource>,
    #[serde(default = "default_char")]
    pub tokenizer: TokenizerKind,
    /// Training steps of the base model.
    pub base_steps: usize,
    /// Fine-tuning steps of every specialist trial (and of its control).
    pub specialist_steps: usize,
    /// Held-out tokens of each domain (from its validation split) on which bits per token are measured.
    #[serde(default = "default_measure_tokens")]
    pub measure_tokens: usize,
    /// `k`: the router reads this many tokens of a document.
    #[serde(default = "default_router_tokens")]
    pub router_tokens: usize,
    /// Held-out documents per domain (from its test split) on which routing is scored.
    #[serde(default = "default_documents")]
    pub documents: usize,
    #[serde(default = "default_document_tokens")]
    pub document_tokens: usize,
    /// Bits per parameter in place of the BIC's `½ log2 N_S`.
    #[serde(default)]
    pub bits_per_parameter: Option<f64>,
}

impl DomainsConfig {
    pub fn validate(&self) -> Result<()> {
        if self.sources.len() < 2 {
            return Err(Error::invalid("domains.sources", "name at least two domains"));
        }
        for (i, source) in self.sources.iter().enumerate() {
            if self.sources[..i].iter().any(|s| s.name == source.name) {
                return Err(Error::invalid("domains.sources", format!("domain `{}` is named twice", source.name)));
            }
        }
        Error::require_counts([
            ("domains.base_steps", self.base_steps),
            ("domains.specialist_steps", self.specialist_steps),
            ("domains.measure_tokens", self.measure_tokens),
            ("domains.router_tokens", self.router_tokens),
            ("domains.documents", self.documents),
            ("domains.document_tokens", self.document_tokens),
        ])?;
        if self.router_tokens > self.document_tokens {
            return Err(Error::invalid("domains.router_tokens", "must not exceed domains.document_tokens"));
        }
        match self.bits_per_parameter {
            Some(bits) => Error::require_bits("domains.bits_per_parameter", bits, false),
            None => Ok(()),
        }
    }
}

/// Everything a domain run needs beyond `domains:`: the model and how to train it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DomainsPlan {
    pub domains: DomainsConfig,
    pub model: ModelShape,
    pub batch_size: usize,
    pub optim: OptimConfig,
    pub seed: u64,
    pub vocab_cap: usize,
}

/// One recruitment decision for a domain, in bits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct DomainDecision {
    pub domain: String,
    /// The pool model that coded the domain best before the trial.
    pub best_model: String,
    /// `N_S`: tokens of the domain's training split.
    pub domain_tokens: usize,
    /// Bits per token on the held-out sample: best model, its control, the specialist.
    pub best_bits_per_token: f64,
    pub control_bits_per_token: f64,
    pub specialist_bits_per_token: f64,
    /// `L(S | control)` and `L(S | new)` over the whole domain.
    pub bits_before: f64,
    pub bits_after: f64,
    pub cost_bits: f64,
    pub parameters: usize,
    pub recruited: bool,
    /// The model that serves this domain from now on.
    pub assigned_model: String,
}

/// The pool's description length after each step: data bits of every domain under its model plus the
/// cost of every specialist.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct DescriptionLength {
    pub after_domain: String,
    /// Data bits of every domain so far under its assigned model, plus every specialist's cost.
    pub total_bits: f64,
    /// The same had this domain's specialist not been recruited (equal when it was not).
    pub without_this_recruitment_bits: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct RoutingRow {
    pub domain: String,
    pub documents: usize,
    /// Share of the domain's held-out documents sent to its assigned model.
    pub accuracy: f64,
    /// How many documents went to each pool model, in pool order.
    pub sent_to: Vec<usize>,
}

/// `recruitment.json` of a domain run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct DomainsSummary {
    pub pool: Vec<String>,
    pub domains: Vec<String>,
    /// `bits_per_token[m][d]`: pool model `m` on domain `d`'s held-out sample, at the end.
    pub bits_per_token: Vec<Vec<f64>>,
    pub decisions: Vec<DomainDecision>,
    pub description_length: Vec<DescriptionLength>,
    pub routing: Vec<RoutingRow>,
    pub router_tokens: usize,
}

/// `manifest.json` of a pool directory: ordinary checkpoints and what each is for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Manifest {
    pub models: Vec<PoolModel>,
    /// The model that serves each domain.
    pub assignments: Vec<(String, String)>,
    pub router_tokens: usize,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PoolModel {
    pub name: String,
    pub file: String,
    /// The domain it was trained or fine-tuned on.
    pub trained_on: String,
    pub parent: Option<String>,
    pub parameters: usize,
}

pub const MANIFEST: &str = "manifest.json";

struct Domain {
    name: String,
    train: Vec<u32>,
    measure: Vec<u32>,
    test: Vec<u32>,
}

/// Mean bits per token of `model` on `ids` (every token after the first), without rules.
fn rate(model: &Model<f32>, ids: &[u32], batch: usize) -> f64 {
    evaluate(model, ids, batch, &Conditions::Plain).bits_per_token
}

/// Held-out bits per token of pool model `m` on domain `d`, each measured once: pool models do not
/// change after they join.
fn pool_rate(
    rates: &mut [Vec<Option<f64>>],
    pool: &[(String, Model<f32>, usize)],
    m: usize,
    d: usize,
    domains: &[Domain],
    batch: usize,
) -> f64 {
    *rates[m][d].get_or_insert_with(|| rate(&pool[m].1, &domains[d].measure, batch))
}

/// Plain language-model training of `model` on `ids` for `steps` steps with a fresh optimizer.
fn fit(model: &mut Model<f32>, ids: &[u32], steps: usize, plan: &DomainsPlan, stream: u64) -> Result<()> {
    let mut optimizer = AdamW::new(&model.params);
    let seq_len = model.config.ctx_len;
    if ids.len() <= seq_len + 1 {
        return Err(Error::invalid(
            "domains",
            format!("a training split has {} tokens, fewer than one context", ids.len()),
        ));
    }
    let step_plan = StepPlan {
        batches: Batches { batch_size: plan.batch_size, seed: plan.seed ^ stream },
        optim: &plan.optim,
        total_steps: steps,
        locality: None,
        train_ids: ids,
    };
    for step in 0..steps {
        train_step(model, &mut optimizer, &step_plan, step, step).map_err(|NonFinite { loss, .. }| {
            Error::Numeric(format!("loss became {loss} at step {step} of a domain model"))
        })?;
    }
    Ok(())
}

fn parameter_cost(parameters: usize, domain_tokens: usize, bits_per_parameter: Option<f64>) -> f64 {
    parameters as f64 * bits_per_parameter.unwrap_or(0.5 * (domain_tokens.max(2) as f64).log2())
}

/// Held-out documents of a domain: consecutive pieces of its test split.
fn documents(test: &[u32], count: usize, length: usize) -> Vec<&[u32]> {
    test.chunks_exact(length).take(count).collect()
}

/// Index of the smallest of `bits`, the first on ties (0 when empty).
/// The index of the fewest bits among the finite ones (the first index when none is finite).
fn fewest(bits: &[f64]) -> usize {
    (0..bits.len())
        .fold(0, |b, i| if bits[i].is_finite() && (!bits[b].is_finite() || bits[i] < bits[b]) { i } else { b })
}

/// Index of the pool model with the fewest bits on the first `k` tokens of `document`, and every
/// model's bits.
pub fn route<'a>(pool: impl IntoIterator<Item = &'a Model<f32>>, document: &[u32], k: usize) -> (usize, Vec<f64>) {
    let head = &document[..document.len().min(k + 1)];
    let bits: Vec<f64> = pool
        .into_iter()
        .map(|m| {
            let scored = evaluate(m, head, 1, &Conditions::Plain);
            scored.bits_per_token * scored.tokens as f64
        })
        .collect();
    (fewest(&bits), bits)
}

/// Runs hierarchical recruitment and writes the pool (checkpoints + manifest) and `recruitment.json`
/// into `out_dir`.
pub fn run(plan: &DomainsPlan, out_dir: &Path, progress: &Progress) -> Result<DomainsSummary> {
    let config = &plan.domains;
    config.validate()?;
    let splits: Vec<(String, crate::data::Splits)> =
        config.sources.iter().map(|s| s.load().map(|sp| (s.name.clone(), sp))).collect::<Result<_>>()?;
    let all_train: String = splits.iter().map(|(_, s)| s.train.as_str()).collect::<Vec<_>>().join("\n");
    let vocabulary = Vocabulary::build(config.tokenizer, &all_train, plan.vocab_cap);
    let domains: Vec<Domain> = splits
        .iter()
        .map(|(name, s)| {
            let valid = vocabulary.encode(&s.valid);
            Domain {
                name: name.clone(),
                train: vocabulary.encode(&s.train),
                measure: valid[..valid.len().min(config.measure_tokens + 1)].to_vec(),
                test: vocabulary.encode(&s.test),
            }
        })
        .collect();
    let pool_dir = out_dir.join("pool");
    std::fs::create_dir_all(&pool_dir).map_err(|e| Error::io(&pool_dir, e))?;
    let model_config = plan.model.config(vocabulary.len());
    let mut base = Model::<f32>::init(model_config, plan.seed)?;
    progress.note(&format!("base model: {} steps on {}", config.base_steps, domains[0].name));
    fit(&mut base, &domains[0].train, config.base_steps, plan, 0)?;
    let parameters = base.params.parameter_count();
    // pool entries: (name, model, index of the domain it was trained on)
    let mut pool: Vec<(String, Model<f32>, usize)> = vec![(format!("base-{}", domains[0].name), base, 0)];
    let mut assigned: Vec<usize> = vec![0; domains.len()];
    let mut decisions = Vec::new();
    let mut description_length = Vec::new();
    let batch = plan.batch_size;
    let mut rates: Vec<Vec<Option<f64>>> = vec![vec![None; domains.len()]];
    // data bits of each domain under its assigned model (the held-out rate times N_S), and the specialists' cost
    let mut domain_data_bits: Vec<f64> =
        vec![pool_rate(&mut rates, &pool, 0, 0, &domains, batch) * domains[0].train.len() as f64];
    let mut specialist_bits = 0.0;
    description_length.push(DescriptionLength {
        after_domain: domains[0].name.clone(),
        total_bits: domain_data_bits[0],
        without_this_recruitment_bits: domain_data_bits[0],
    });
    for d in 1..domains.len() {
        let bits: Vec<f64> = (0..pool.len()).map(|m| pool_rate(&mut rates, &pool, m, d, &domains, batch)).collect();
        let best = fewest(&bits);
        let (best_name, best_model, best_home) = (pool[best].0.clone(), &pool[best].1, pool[best].2);
        progress.note(&format!("domain {}: best model {best_name} at {:.3} bits/token", domains[d].name, bits[best]));
        let mut control = best_model.clone();
        fit(&mut control, &domains[best_home].train, config.specialist_steps, plan, 1 + best_home as u64)?;
        let mut specialist = best_model.clone();
        fit(&mut specialist, &domains[d].train, config.specialist_steps, plan, 1 + d as u64)?;
        let n = domains[d].train.len();
        let control_bpt = rate(&control, &domains[d].measure, batch);
        let specialist_bpt = rate(&specialist, &domains[d].measure, batch);
        let cost = parameter_cost(parameters, n, config.bits_per_parameter);
        let (bits_before, bits_after) = (control_bpt * n as f64, specialist_bpt * n as f64);
        let recruited = bits_before - bits_after > cost;
        let name = format!("specialist-{}", domains[d].name);
        if recruited {
            pool.push((name.clone(), specialist, d));
            let mut row = vec![None; domains.len()];
            row[d] = Some(specialist_bpt);
            rates.push(row);
            assigned[d] = pool.len() - 1;
        } else {
            assigned[d] = best;
        }
        progress.note(&format!(
            "domain {}: specialist saves {:.0} bits, costs {:.0}: {}",
            domains[d].name,
            bits_before - bits_after,
            cost,
            if recruited { "recruited" } else { "not recruited" }
        ));
        decisions.push(DomainDecision {
            domain: domains[d].name.clone(),
            best_model: best_name,
            domain_tokens: n,
            best_bits_per_token: bits[best],
            control_bits_per_token: control_bpt,
            specialist_bits_per_token: specialist_bpt,
            bits_before,
            bits_after,
            cost_bits: cost,
            parameters,
            recruited,
            assigned_model: pool[assigned[d]].0.clone(),
        });
        let so_far: f64 = domain_data_bits.iter().sum::<f64>() + specialist_bits;
        let (domain_bits, added_cost) = if recruited { (bits_after, cost) } else { (bits_before, 0.0) };
        specialist_bits += added_cost;
        domain_data_bits.push(domain_bits);
        // both sums in one order, so that a domain that recruits nothing leaves them equal to the bit
        description_length.push(DescriptionLength {
            after_domain: domains[d].name.clone(),
            total_bits: so_far + domain_bits + added_cost,
            without_this_recruitment_bits: so_far + bits_before,
        });
    }
    // the pool on disk: ordinary checkpoints and a manifest
    let mut manifest = Manifest { models: Vec::new(), assignments: Vec::new(), router_tokens: config.router_tokens };
    for (index, (name, model, home)) in pool.iter().enumerate() {
        let file = format!("{name}.safetensors");
        let ckpt = Checkpoint { model: model.clone(), vocabulary: vocabulary.clone(), step: 0, locality: None };
        checkpoint::save(&pool_dir.join(&file), &ckpt)?;
        manifest.models.push(PoolModel {
            name: name.clone(),
            file,
            trained_on: domains[*home].name.clone(),
            parent: (index > 0)
                .then(|| decisions.iter().find(|d| &d.assigned_model == name).map(|d| d.best_model.clone()))
                .flatten(),
            parameters: model.params.parameter_count(),
        });
    }
    manifest.assignments = domains.iter().zip(&assigned).map(|(d, &m)| (d.name.clone(), pool[m].0.clone())).collect();
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| Error::Numeric(e.to_string()))?;
    checkpoint::atomic_write(&pool_dir.join(MANIFEST), json.as_bytes())?;
    // routing of held-out documents
    let mut routing = Vec::new();
    for (d, domain) in domains.iter().enumerate() {
        let docs = documents(&domain.test, config.documents, config.document_tokens);
        let mut sent_to = vec![0usize; pool.len()];
        for doc in &docs {
            sent_to[route(pool.iter().map(|(_, m, _)| m), doc, config.router_tokens).0] += 1;
        }
        let accuracy = sent_to[assigned[d]] as f64 / docs.len().max(1) as f64;
        routing.push(RoutingRow { domain: domain.name.clone(), documents: docs.len(), accuracy, sent_to });
    }
    let summary = DomainsSummary {
        pool: pool.iter().map(|(n, ..)| n.clone()).collect(),
        domains: domains.iter().map(|d| d.name.clone()).collect(),
        bits_per_token: (0..pool.len())
            .map(|m| (0..domains.len()).map(|d| pool_rate(&mut rates, &pool, m, d, &domains, batch)).collect())
            .collect(),
        decisions,
        description_length,
        routing,
        router_tokens: config.router_tokens,
    };
    let json = serde_json::to_string_pretty(&summary).map_err(|e| Error::Numeric(e.to_string()))?;
    checkpoint::atomic_write(&out_dir.join(SUMMARY), json.as_bytes())?;
    Ok(summary)
}

pub const SUMMARY: &str = "recruitment.json";

/// A pool read back from its directory.
pub struct Pool {
    pub manifest: Manifest,
    pub models: Vec<Model<f32>>,
    pub vocabulary: Vocabulary,
}

pub fn load_pool(dir: &Path) -> Result<Pool> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| Error::Config { path: path.clone(), message: e.to_string() })?;
    let mut models = Vec::new();
    let mut vocabulary = None;
    for entry in &manifest.models {
        let file: PathBuf = dir.join(&entry.file);
        let loaded = checkpoint::load(&file)?;
        if vocabulary.as_ref().is_some_and(|v: &Vocabulary| *v != loaded.vocabulary) {
            return Err(Error::Checkpoint { path: file, message: "its vocabulary differs from the pool's".into() });
        }
        vocabulary = Some(loaded.vocabulary);
        models.push(loaded.model);
    }
    let vocabulary = vocabulary.ok_or_else(|| Error::Config { path, message: "the manifest lists no model".into() })?;
    Ok(Pool { manifest, models, vocabulary })
}

#[cfg(test)]
mod tests {
    use super::fewest;

    #[test]
    fn a_model_with_non_finite_bits_is_never_the_fewest() {
        assert_eq!(fewest(&[f64::NAN, 3.0, 2.0, f64::INFINITY]), 2);
        assert_eq!(fewest(&[f64::NEG_INFINITY, 5.0]), 1);
        assert_eq!(fewest(&[1.0, 1.0, 4.0]), 0, "ties go to the first model");
    }
}
