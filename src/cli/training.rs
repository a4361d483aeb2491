//! `ailla train` and `ailla eval`.

use super::*;

/// Reads a YAML training config; relative corpus paths resolve against the config's directory.
pub fn load_train_config(path: &Path) -> Result<TrainConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut config: TrainConfig = serde_saphyr::from_str(&text)
        .map_err(|e| Error::Config { path: path.to_path_buf(), message: e.to_string() })?;
    let base = path.parent().unwrap_or(Path::new("."));
    // the same resolution as pipelines use, so both name files alike
    if let CorpusSource::Directory(dir) = &mut config.corpus {
        if dir.is_relative() {
            *dir = crate::pipeline::normalize(&base.join(&*dir));
        }
    }
    if let Some(RulesSource::File(rules)) = config.locality.as_mut().map(|l| &mut l.rules) {
        if rules.is_relative() {
            *rules = crate::pipeline::normalize(&base.join(&*rules));
        }
    }
    Ok(config)
}

pub(super) fn train_config(args: &TrainArgs) -> Result<TrainConfig> {
    let mut config = match &args.config {
        Some(path) => load_train_config(path)?,
        None => TrainConfig::default(),
    };
    if let Some(corpus) = &args.corpus {
        config.corpus = CorpusSource::parse(corpus);
    }
    if let Some(kind) = args.tokenizer {
        config.tokenizer = kind.into();
    }
    let overrides = [
        (args.steps, &mut config.steps),
        (args.batch_size, &mut config.batch_size),
        (args.ctx_len, &mut config.model.ctx_len),
        (args.d_model, &mut config.model.d_model),
        (args.layers, &mut config.model.n_layers),
        (args.heads, &mut config.model.n_heads),
    ];
    for (value, field) in overrides {
        if let Some(v) = value {
            *field = v;
        }
    }
    if let Some(lr) = args.learning_rate {
        config.optim.learning_rate = lr;
    }
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    Ok(config)
}

pub(super) fn run_train(args: TrainArgs, device: crate::engine::cuda::StepDevice, out: &mut dyn Write) -> Result<()> {
    let config = if args.resume {
        let path = train::RunPaths::new(&args.out).config();
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Config {
                path: args.out.clone(),
                message: "is not a run directory (it has no train.json): nothing to resume; start a run with \
                          `ailla train … --out DIR`"
                    .into(),
            },
            _ => Error::io(&path, e),
        })?;
        serde_json::from_str(&text).map_err(|e| Error::Config { path: path.clone(), message: e.to_string() })?
    } else {
        train_config(&args)?
    };
    let progress = Progress::for_stderr(config.steps);
    let control = train::RunControl {
        resume: args.resume,
        stop_after: args.stop_after,
        interrupt: Some(train::interrupt_flag()),
        force: args.force,
        resume_command: None,
        device,
    };
    let summary = train::train(&config, &args.out, &control, &progress)?;
    if args.json {
        let output = json::TrainOutput {
            run_dir: args.out.display().to_string(),
            steps_done: summary.steps_done,
            steps_planned: summary.steps_planned,
            train_tokens: summary.train_tokens,
            tokenizer: summary.tokenizer.name().to_string(),
            vocab_size: summary.vocab_size,
            parameters: summary.parameters,
            seconds: summary.seconds,
            unigram_entropy_nats: summary.unigram_entropy_nats,
            valid: summary.valid.clone(),
            test: summary.test.clone(),
            dial: summary.dial.iter().map(json::DialPoint::of).collect(),
        };
        return write_out(
            out,
            &(serde_json::to_string_pretty(&output).map_err(|e| Error::Numeric(e.to_string()))? + "\n"),
        );
    }
    let table = format!(
        "trained {}/{} steps on {} tokens ({} tokenizer, vocabulary {}, {} parameters) in {:.1} s\n\
         unigram entropy (valid)  {:.4} nats\n\
         valid  mean CE {:.4} nats  perplexity {:.3}  accuracy {:.4}\n\
         test   mean CE {:.4} nats  perplexity {:.3}  accuracy {:.4}\n\
         run directory: {}\n",
        summary.steps_done,
        summary.steps_planned,
        summary.train_tokens,
        summary.tokenizer.name(),
        summary.vocab_size,
        summary.parameters,
        summary.seconds,
        summary.unigram_entropy_nats,
        summary.valid.mean_ce_nats,
        summary.valid.perplexity,
        summary.valid.accuracy,
        summary.test.mean_ce_nats,
        summary.test.perplexity,
        summary.test.accuracy,
        args.out.display(),
    );
    write_out(out, &table)?;
    if summary.steps_done < summary.steps_planned {
        write_out(out, &format!("paused; continue with `ailla train --resume --out {}`\n", args.out.display()))?;
    }
    Ok(())
}

/// Parses whitespace-separated ids, naming the line and column of the first bad one.
pub fn parse_ids(path: &Path, text: &str, vocab_size: usize) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for (line_index, line) in text.lines().enumerate() {
        let mut column = 1;
        for piece in line.split(' ') {
            for token in piece.split_whitespace() {
                let offset = piece.find(token).unwrap_or(0);
                let id: Option<u32> = token.parse().ok().filter(|&i: &u32| (i as usize) < vocab_size);
                match id {
                    Some(id) => ids.push(id),
                    None => {
                        return Err(Error::Corpus {
                            path: path.to_path_buf(),
                            message: format!(
                            "line {}, column {}: `{token}` is not a token id below the vocabulary size {vocab_size}",
                            line_index + 1,
                            column + offset
                        ),
                        })
                    }
                }
            }
            column += piece.len() + 1;
        }
    }
    if ids.len() < 2 {
        return Err(Error::Corpus {
            path: path.to_path_buf(),
            message: "needs at least two token ids (one to condition on, one to predict)".into(),
        });
    }
    Ok(ids)
}

pub(super) fn run_eval(args: EvalArgs, out: &mut dyn Write) -> Result<()> {
    // the flags first: a wrong one should not wait for a checkpoint and a corpus to load
    for (flag, value) in [("--margin", args.margin), ("--temperature", args.temperature), ("--penalty", args.penalty)] {
        if let Some(value) = value.filter(|v| !v.is_finite()) {
            return Err(Error::invalid(flag, format!("is {value}; it must be a finite number")));
        }
    }
    if args.batch_size == 0 {
        return Err(Error::invalid("--batch-size", "must be at least 1"));
    }
    let ckpt = checkpoint::load(&args.checkpoint)?;
    let ids = match (&args.text, &args.ids) {
        (Some(path), _) => {
            let text = crate::data::corpus::read_text(path)?;
            let ids = ckpt.vocabulary.encode(&text);
            if ids.len() < 2 {
                return Err(Error::Corpus { path: path.clone(), message: "encodes to fewer than two tokens".into() });
            }
            ids
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            parse_ids(path, &text, ckpt.model.config.vocab_size)?
        }
        (None, None) => return Err(Error::invalid("--text", "give --text FILE or --ids FILE")),
    };
    if !args.lambda.is_empty() || args.rules.is_some() {
        return run_dial_eval(&args, &ckpt, &ids, out);
    }
    let result = evaluate(&ckpt.model, &ids, args.batch_size, &Conditions::Plain);
    let hint =
        format!("the checkpoint {} holds weights that do not give finite probabilities", args.checkpoint.display());
    Error::require_finite("the mean cross-entropy", result.mean_ce_nats, &hint)?;
    let text = if args.json {
        let output = json::EvalOutput {
            checkpoint: args.checkpoint.display().to_string(),
            tokenizer: ckpt.vocabulary.kind.name().to_string(),
            tokens: result.tokens,
            language_model: Some(result),
            dial: Vec::new(),
        };
        serde_json::to_string_pretty(&output).map_err(|e| Error::Numeric(e.to_string()))? + "\n"
    } else {
        eval_table(&result, ckpt.vocabulary.kind)
    };
    write_out(out, &text)
}

pub(super) fn run_dial_eval(
    args: &EvalArgs,
    ckpt: &checkpoint::Checkpoint,
    ids: &[u32],
    out: &mut dyn Write,
) -> Result<()> {
    let layout = crate::dsl::ModelLayout { layers: ckpt.model.config.n_layers, heads: ckpt.model.config.n_heads };
    let extra = args.rules.as_deref().map(|r| RulesSource::parse(r).load_for(Some(layout))).transpose()?;
    let spec = match (&ckpt.locality, extra) {
        (Some(stored), Some(extra)) => stored.rules.with(&extra),
        (Some(stored), None) => stored.rules.clone(),
        (None, Some(extra)) => extra,
        (None, None) => {
            return Err(Error::invalid("--rules", "this checkpoint was trained without rules; give --rules FILE"))
        }
    };
    let (set, warnings) = RuleSet::compile(&spec, &ckpt.vocabulary)?;
    for warning in &warnings {
        crate::eprintln_lossy!("warning: {}", warning.0);
    }
    let stored = ckpt.locality.as_ref();
    let base = stored.map_or_else(DialSettings::default, |s| s.dial);
    let settings = DialSettings {
        margin: args.margin.unwrap_or(base.margin),
        temperature: args.temperature.unwrap_or(base.temperature),
        penalty: args.penalty.unwrap_or(base.penalty),
    };
    // the flags, not the pipeline fields, are what the user gave here
    settings.validate().map_err(|e| match e {
        Error::Invalid { field, message } => {
            let flag = field.strip_prefix("locality.").map_or(field.clone(), |name| format!("--{name}"));
            Error::Invalid { field: flag, message }
        }
        other => other,
    })?;
    if !(args.epsilon > 0.0 && args.epsilon < 1.0) {
        return Err(Error::invalid("--epsilon", "must lie strictly between 0 and 1"));
    }
    let lambdas = if args.lambda.is_empty() { vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0] } else { args.lambda.clone() };
    if let Some(bad) = lambdas.iter().find(|l| !(0.0..=1.0).contains(*l)) {
        return Err(Error::invalid("--lambda", format!("λ = {bad} is outside [0, 1]")));
    }
    let evaluation = DialEvaluation {
        rules: &set,
        settings,
        progressive_beta: stored.and_then(|s| s.progressive_beta),
        epsilon: args.epsilon,
        certificate_batches: args.certificate_batches,
        batch_size: args.batch_size,
    };
    // a copy rule injected at evaluation gets a copy path of its own, shut (METHOD §7's b₀): it acts
    // only as far as an untrained gate lets it
    let mut model = ckpt.model.clone();
    for name in crate::locality::copy_paths::missing_paths(&set, &model.config.copy_paths) {
        model.add_copy_path(&name)?;
    }
    let rows: Vec<LocalityMetrics> = lambdas.iter().map(|&l| evaluate_at(&model, ids, l, &evaluation)).collect();
    for row in &rows {
        Error::require_finite(
            &format!("the mean cross-entropy at λ = {}", row.lambda),
            row.language_model.mean_ce_nats,
            &format!("the checkpoint {} does not give finite probabilities", args.checkpoint.display()),
        )?;
    }
    let text = if args.json {
        let output = json::EvalOutput {
            checkpoint: args.checkpoint.display().to_string(),
            tokenizer: ckpt.vocabulary.kind.name().to_string(),
            tokens: ids.len().saturating_sub(1),
            language_model: None,
            dial: rows.iter().map(json::DialPoint::of).collect(),
        };
        serde_json::to_string_pretty(&output).map_err(|e| Error::Numeric(e.to_string()))? + "\n"
    } else {
        dial_table(&rows, ckpt.vocabulary.kind, &settings, args.epsilon)
    };
    write_out(out, &text)
}
