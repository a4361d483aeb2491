//! Experiment pipelines (`ailla run`, `ailla validate`): a YAML file describing data, model, training,
//! the locality dial, recruitment priors, evaluation, sweeps and outputs. Relative input paths (data,
//! rules) resolve against the pipeline file; the output directory against the working directory.

pub mod diagnostics;
pub mod locate;
pub mod run;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::TokenizerKind;
use crate::engine::optim::OptimConfig;
use crate::locality::{DialSettings, LambdaSchedule, RulesSource};
use crate::train::{CorpusSource, Injection, LocalityConfig, ModelShape, TrainConfig};

mod expand;
mod schema;

pub use expand::*;
pub use schema::*;

/// What the command line changes in a pipeline before it is planned.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// `--quick`: apply the pipeline's `quick` section.
    pub quick: bool,
    /// `--data DIR`: the corpus directory, in place of `data.corpus` (relative to the working directory).
    pub data_directory: Option<PathBuf>,
}

/// One problem in a pipeline file.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// Dotted YAML path of the offending field (`train.optim.learning_rate`).
    pub field: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, "{line}:{column}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "`{}`: ", self.field)?;
        }
        write!(f, "{}", self.message)
    }
}

/// A member of the sweep, ready to train.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Member {
    pub name: String,
    pub config: TrainConfig,
}

/// A validated pipeline expanded into its members.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub name: String,
    pub output_dir: PathBuf,
    pub threads: Option<usize>,
    pub members: Vec<Member>,
    #[serde(default)]
    pub published: Option<PublishedSection>,
    /// Whether this is the `--quick` variant of the pipeline.
    #[serde(default)]
    pub quick: bool,
    /// A domain-recruitment run (METHOD §8) instead of sweep members.
    #[serde(default)]
    pub domains: Option<crate::recruit::domains::DomainsPlan>,
    /// The pipeline's `card` statement (intended use, limitations, owner), for the report.
    #[serde(default)]
    pub card: Option<CardSection>,
    /// `train.device`: where the members train (a global `--device` overrides it).
    #[serde(default, skip_serializing_if = "crate::engine::cuda::DeviceChoice::is_cpu")]
    pub device: crate::engine::cuda::DeviceChoice,
}

/// The closest of `candidates` to `word`, for "did you mean".
fn suggestion<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    crate::suggest::closest(word, candidates, 1).into_iter().next()
}

/// Adds "did you mean" to serde's "unknown field/variant `x`, expected one of `a`, `b`" messages.
fn with_suggestion(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or(message);
    for kind in ["unknown field `", "unknown variant `"] {
        let Some(start) = first_line.find(kind) else { continue };
        let rest = &first_line[start + kind.len()..];
        let Some(end) = rest.find('`') else { continue };
        let unknown = &rest[..end];
        let expected: Vec<&str> = rest[end..]
            .split(|c: char| c == ',' || c.is_whitespace())
            .map(|w| w.trim_matches(|c| c == '`' || c == '.'))
            .filter(|w| !w.is_empty() && *w != "expected" && *w != "one" && *w != "of")
            .collect();
        if let Some(best) = suggestion(unknown, expected.into_iter()) {
            return format!("{message}\n  help: did you mean `{best}`?");
        }
    }
    message.to_string()
}

fn problem(text: &str, field: &str, message: impl Into<String>) -> Problem {
    let (line, column) = locate::position(text, field).map_or((None, None), |(l, c)| (Some(l), Some(c)));
    Problem { field: field.into(), line, column, message: message.into() }
}

/// Parses and validates a pipeline file, expanding its sweep. Every problem found is returned at once.
pub fn load(path: &Path) -> crate::Result<Result<Plan, Vec<Problem>>> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
    Ok(plan(&text, path))
}

pub fn plan(text: &str, path: &Path) -> Result<Plan, Vec<Problem>> {
    plan_with(text, path, &PlanOptions::default())
}

/// [`plan`] with the command line's changes.
pub fn plan_with(text: &str, path: &Path, options: &PlanOptions) -> Result<Plan, Vec<Problem>> {
    let mut pipeline: Pipeline = match serde_saphyr::from_str(text) {
        Ok(p) => p,
        Err(e) => {
            let message = with_suggestion(&e.to_string()).replace("<input>", &path.display().to_string());
            // serde-saphyr's message starts with "error: line L column C: "; the position is shown
            // by the problem itself
            let (line, column) = parse_position(&message);
            let message = match (line, message.strip_prefix("error: ")) {
                (Some(_), Some(rest)) => rest.split_once(": ").map_or(rest, |(_, m)| m).to_string(),
                _ => message,
            };
            return Err(vec![Problem { field: String::new(), line, column, message }]);
        }
    };
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut problems = Vec::new();
    if let Some(directory) = &options.data_directory {
        // given on the command line, so relative to the working directory rather than the file
        let directory = std::path::absolute(directory).unwrap_or_else(|_| directory.clone());
        pipeline.data.corpus = CorpusSource::Directory(normalize(&directory));
    }
    let mut quick = Vec::new();
    if options.quick {
        if pipeline.quick.is_empty() {
            problems.push(problem(text, "quick", "`--quick` needs a `quick` section naming the fields it changes"));
        }
        // quick values apply to the whole file first (so that `train.seeds` shapes the sweep and
        // `domains.*` the pool), and again to every sweep member
        quick = quick_fields(&pipeline, text, &mut problems);
        let mut document = serde_json::to_value(&pipeline).unwrap_or_default();
        apply_fields(&mut document, &quick);
        match serde_json::from_value(document) {
            Ok(changed) => pipeline = changed,
            Err(e) => problems.push(problem(text, "quick", e.to_string())),
        }
    }
    validate_static(&pipeline, text, &base, &mut problems);
    if let Some(domains) = &pipeline.domains {
        return plan_domains(&pipeline, domains, text, &base, options, problems);
    }
    let members = expand(&pipeline, text, &quick, &mut problems);
    let sweeping = members.len() > 1;
    let mut planned = Vec::new();
    for (name, member) in members {
        let config = to_train_config(&member, &base);
        if let Err(e) = config.validate() {
            let (field, message) = field_and_message(&e, "(member)");
            let field = pipeline_field(&field);
            let message = if sweeping { format!("{message} (in sweep member `{name}`)") } else { message };
            problems.push(problem(text, &field, message));
        }
        planned.push(Member { name, config });
    }
    if !problems.is_empty() {
        problems.dedup();
        return Err(problems);
    }
    let output_dir = output_dir(&pipeline, options.quick);
    Ok(Plan {
        name: pipeline.name.clone(),
        output_dir,
        threads: pipeline.train.threads,
        members: planned,
        published: pipeline.published.clone(),
        quick: options.quick,
        domains: None,
        card: pipeline.card.clone(),
        device: pipeline.train.device,
    })
}

/// A validation error as the field it names (or `otherwise`) and its message, for a pipeline problem.
fn field_and_message(e: &crate::Error, otherwise: &str) -> (String, String) {
    match e {
        crate::Error::Invalid { field, message } => (field.clone(), message.clone()),
        other => (otherwise.to_string(), other.to_string()),
    }
}

/// `outputs.dir`, or `runs/<name>`; `<…>-quick` for the quick variant so it never overwrites a full run.
fn output_dir(pipeline: &Pipeline, quick: bool) -> PathBuf {
    let dir = pipeline.outputs.dir.clone().unwrap_or_else(|| PathBuf::from("runs").join(&pipeline.name));
    if quick {
        PathBuf::from(format!("{}-quick", dir.display()))
    } else {
        dir
    }
}

/// A pipeline with `domains`: one pool run, its corpora resolved against the pipeline file.
fn plan_domains(
    pipeline: &Pipeline,
    domains: &crate::recruit::domains::DomainsConfig,
    text: &str,
    base: &Path,
    options: &PlanOptions,
    mut problems: Vec<Problem>,
) -> Result<Plan, Vec<Problem>> {
    let mut domains = domains.clone();
    for source in &mut domains.sources {
        source.corpus = resolve_corpus(base, &source.corpus);
        if let CorpusSource::Directory(dir) = &source.corpus {
            if !dir.is_dir() {
                problems.push(problem(
                    text,
                    "domains.sources.corpus.directory",
                    format!("{} (domain `{}`) is not a directory", dir.display(), source.name),
                ));
            }
        }
    }
    if let Err(e) = domains.validate() {
        let (field, message) = field_and_message(&e, "domains");
        problems.push(problem(text, &field, message));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let output_dir = output_dir(pipeline, options.quick);
    Ok(Plan {
        name: pipeline.name.clone(),
        output_dir,
        threads: pipeline.train.threads,
        members: Vec::new(),
        published: None,
        quick: options.quick,
        domains: Some(crate::recruit::domains::DomainsPlan {
            domains,
            model: pipeline.model.clone(),
            batch_size: pipeline.train.batch_size,
            optim: pipeline.train.optim.clone(),
            seed: pipeline.train.seed,
            vocab_cap: pipeline.data.vocab_cap,
        }),
        card: pipeline.card.clone(),
        device: pipeline.train.device,
    })
}

/// Where a training-config field lives in a pipeline file.
fn pipeline_field(field: &str) -> String {
    let mapped = [
        ("steps", "train.steps"),
        ("batch_size", "train.batch_size"),
        ("eval_tokens", "train.eval_tokens"),
        ("final_eval_tokens", "evaluation.max_tokens"),
        ("vocab_cap", "data.vocab_cap"),
        ("optim.", "train.optim."),
        ("locality.margin", "locality.dial.margin"),
        ("locality.temperature", "locality.dial.temperature"),
        ("locality.penalty", "locality.dial.penalty"),
        ("locality.schedule", "locality.lambda.schedule"),
        ("locality.progressive_beta", "locality.lambda.progressive_beta"),
        ("locality.eval_lambdas", "evaluation.lambdas"),
    ];
    for (from, to) in mapped {
        if field == from || (from.ends_with('.') && field.starts_with(from)) || field.starts_with(&format!("{from}.")) {
            return format!("{to}{}", &field[from.len()..]);
        }
    }
    field.to_string()
}

fn parse_position(message: &str) -> (Option<usize>, Option<usize>) {
    let numbers: Vec<usize> = message
        .lines()
        .next()
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .filter_map(|s| s.parse().ok())
        .collect();
    match numbers[..] {
        [line, column] if message.contains("line") => (Some(line), Some(column)),
        _ => (None, None),
    }
}

fn resolve(base: &Path, path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_relative() {
        normalize(&base.join(p))
    } else {
        p
    }
}

/// `pipelines/../rules/x.rules` → `rules/x.rules`, without touching the file system, so that reports
/// name files the way a reader would.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir
                if out.components().next_back().is_some_and(|c| matches!(c, std::path::Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `bundled` or a path, as [`RulesSource::parse`] reads it, with the path resolved against `base`.
fn rules_source(base: &Path, text: &str) -> RulesSource {
    match RulesSource::parse(text) {
        RulesSource::File(path) => RulesSource::File(resolve(base, &path.to_string_lossy())),
        bundled => bundled,
    }
}

/// Checks that need the file system or more than one field.
fn validate_static(p: &Pipeline, text: &str, base: &Path, problems: &mut Vec<Problem>) {
    if p.name.trim().is_empty() || p.name.contains(['/', '\\']) {
        problems.push(problem(text, "name", "must be a non-empty name without slashes (it names the run directory)"));
    }
    if let CorpusSource::Directory(dir) = &p.data.corpus {
        let dir = if dir.is_relative() { base.join(dir) } else { dir.clone() };
        if !dir.is_dir() {
            problems.push(problem(text, "data.corpus.directory", format!("{} is not a directory", dir.display())));
        }
    }
    for (field, value) in p.card.iter().flat_map(CardSection::fields) {
        match value {
            Some(v) if v.trim().is_empty() => problems.push(problem(
                text,
                field,
                "is empty: state it, or leave the field out (the card then says \"not stated\")",
            )),
            Some(v) if v.chars().count() > 4000 => {
                problems.push(problem(text, field, "is longer than 4000 characters: point to a document instead"))
            }
            Some(v) if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
                problems.push(problem(text, field, "holds a control character"))
            }
            _ => {}
        }
    }
    if p.train.threads == Some(0) {
        problems.push(problem(text, "train.threads", "must be at least 1"));
    }
    if let Err(message) = crate::engine::cuda::select(p.train.device) {
        problems.push(problem(text, "train.device", message));
    }
    for &lambda in &p.evaluation.lambdas {
        if !(0.0..=1.0).contains(&lambda) {
            problems.push(problem(text, "evaluation.lambdas", format!("λ = {lambda} is outside [0, 1]")));
        }
    }
    if let Some(locality) = &p.locality {
        let check_rules = |field: &str, name: &str, problems: &mut Vec<Problem>| {
            let source = rules_source(base, name);
            if let RulesSource::File(path) = &source {
                if !path.is_file() {
                    problems.push(problem(text, field, format!("{} does not exist", path.display())));
                    return;
                }
            }
            let layout = crate::dsl::ModelLayout { layers: p.model.n_layers, heads: p.model.n_heads };
            if let Err(e) = source.load_for(Some(layout)) {
                problems.push(problem(text, field, format!("the rules do not compile:\n{e}")));
            }
        };
        check_rules("locality.rules", &locality.rules, problems);
        for injection in &locality.injections {
            check_rules("locality.injections.rules", &injection.rules, problems);
            if injection.until_step.is_some_and(|u| u <= injection.at_step) {
                problems.push(problem(text, "locality.injections.until_step", "must come after at_step"));
            }
            if injection.at_step >= p.train.steps {
                problems.push(problem(
                    text,
                    "locality.injections.at_step",
                    format!("step {} is never reached: training has {} steps", injection.at_step, p.train.steps),
                ));
            }
        }
    }
    if p.outputs.checkpoint_every == 0 {
        problems.push(problem(text, "outputs.checkpoint_every", "must be at least 1"));
    }
}

/// A `quick` field: the keys of its dotted path and its value.
type QuickField = (Vec<String>, serde_json::Value);

/// A corpus directory resolved against the pipeline file's directory.
fn resolve_corpus(base: &Path, corpus: &CorpusSource) -> CorpusSource {
    match corpus {
        CorpusSource::Directory(dir) if dir.is_relative() => CorpusSource::Directory(normalize(&base.join(dir))),
        other => other.clone(),
    }
}

fn to_train_config(p: &Pipeline, base: &Path) -> TrainConfig {
    let corpus = resolve_corpus(base, &p.data.corpus);
    TrainConfig {
        corpus,
        tokenizer: p.data.tokenizer,
        vocab_cap: p.data.vocab_cap,
        model: p.model.clone(),
        steps: p.train.steps,
        batch_size: p.train.batch_size,
        optim: p.train.optim.clone(),
        seed: p.train.seed,
        eval_every: p.train.eval_every,
        eval_tokens: p.train.eval_tokens,
        final_eval_tokens: p.evaluation.max_tokens,
        checkpoint_every: p.outputs.checkpoint_every,
        recruitment: p.recruitment.clone(),
        locality: p.locality.as_ref().map(|l| LocalityConfig {
            rules: rules_source(base, &l.rules),
            dial: l.dial,
            schedule: l.lambda.schedule.clone(),
            progressive_beta: l.lambda.progressive_beta,
            epsilon: l.epsilon,
            eval_lambdas: p.evaluation.lambdas.clone(),
            certificate_batches: l.certificate_batches,
            injections: l
                .injections
                .iter()
                .map(|i| Injection {
                    rules: rules_source(base, &i.rules),
                    at_step: i.at_step,
                    until_step: i.until_step,
                })
                .collect(),
        }),
    }
}
