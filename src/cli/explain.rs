//! `ailla explain`: one prediction of a checkpoint, in sentences, JSON or a page ([`crate::explain`]).

use std::io::Write;

use super::{write_out, ExplainArgs};
use crate::checkpoint;
use crate::explain::{explain, render, Prepared, Request, Tokenized};
use crate::locality::RulesSource;
use crate::{Error, Result};

pub(super) fn run_explain(args: ExplainArgs, out: &mut dyn Write) -> Result<()> {
    // the flags first: a wrong one should not wait for a checkpoint to load
    if !(0.0..=1.0).contains(&args.lambda) {
        return Err(Error::invalid("--lambda", format!("λ = {} is outside [0, 1]", args.lambda)));
    }
    if !(args.epsilon > 0.0 && args.epsilon < 1.0) {
        return Err(Error::invalid("--epsilon", "must lie strictly between 0 and 1"));
    }
    let ckpt = checkpoint::load(&args.checkpoint)?;
    let text = crate::data::corpus::read_text(&args.text)?;
    let tokenized = Tokenized::new(&ckpt.vocabulary, &text);
    if tokenized.ids.len() < 2 {
        return Err(Error::Corpus {
            path: args.text.clone(),
            message: "encodes to fewer than two tokens (one to read, one to predict)".into(),
        });
    }
    let layout = crate::dsl::ModelLayout { layers: ckpt.model.config.n_layers, heads: ckpt.model.config.n_heads };
    let extra = args.rules.as_deref().map(|r| RulesSource::parse(r).load_for(Some(layout))).transpose()?;
    let prepared = Prepared::new(&ckpt, extra.as_ref())?;
    for warning in &prepared.warnings {
        crate::eprintln_lossy!("warning: {warning}");
    }
    if !tokenized.unknown.is_empty() {
        crate::eprintln_lossy!(
            "note: {} piece(s) of {} are not in the vocabulary and are read as <unk>",
            tokenized.unknown.len(),
            args.text.display()
        );
    }
    let request = Request { position: args.at, lambda: args.lambda, epsilon: args.epsilon };
    let label = args.checkpoint.display().to_string();
    let explanation = explain(&prepared, &ckpt.vocabulary, &tokenized, request, &label)?;
    let hint = format!("the checkpoint {label} holds weights that do not give finite probabilities");
    Error::require_finite("the explained probability", explanation.actual.probability, &hint)?;
    let text = if args.json {
        serde_json::to_string_pretty(&explanation).map_err(|e| Error::Numeric(e.to_string()))? + "\n"
    } else if args.html {
        let title = format!("ailla explain: {label}, position {}", explanation.position);
        crate::report::markdown_page(&title, &render::markdown(&explanation))
    } else {
        render::text(&explanation)
    };
    write_out(out, &text)
}
