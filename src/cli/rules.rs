//! `ailla check`, `ailla fmt` and `ailla anchors`.

use super::*;

/// The text of a corpus named on the command line: `bundled`, a directory's training split, or a file.
pub(super) fn corpus_text(name: &str) -> Result<String> {
    match CorpusSource::parse(name) {
        CorpusSource::Directory(path) if path.is_file() => crate::data::corpus::read_text(&path),
        source => Ok(source.load()?.train),
    }
}

pub(super) fn loaded_rules(path: &Path) -> Result<crate::dsl::Loaded> {
    crate::dsl::load(path)
}

pub(super) fn run_check(args: CheckArgs, out: &mut dyn Write) -> Result<()> {
    let loaded = loaded_rules(&args.rules)?;
    let mut layout = None;
    let (vocabulary, corpus_ids) = match (&args.corpus, &args.checkpoint) {
        (Some(corpus), _) => {
            let text = corpus_text(corpus)?;
            let vocabulary = crate::data::Vocabulary::build(args.tokenizer.into(), &text, 1_000_000);
            let ids = vocabulary.encode(&text);
            (Some(vocabulary), Some(ids))
        }
        (None, Some(ckpt)) => {
            let ckpt = checkpoint::load(ckpt)?;
            layout =
                Some(crate::dsl::ModelLayout { layers: ckpt.model.config.n_layers, heads: ckpt.model.config.n_heads });
            (Some(ckpt.vocabulary), None)
        }
        (None, None) => (None, None),
    };
    let options = crate::dsl::CompileOptions { all_warnings: args.all, layout };
    let checked = crate::dsl::Checked::with_options(loaded, vocabulary.as_ref(), options);
    if !checked.diagnostics.is_empty() {
        crate::eprint_lossy!("{}", checked.render());
    }
    if let Some(summary) = checked.errors_found(&args.rules) {
        return Err(Error::Rejected(summary));
    }
    let compiled = &checked.compiled;
    let spec = &compiled.spec;
    let blocks: Vec<json::CheckedBlock> = spec
        .blocks
        .iter()
        .enumerate()
        .map(|(index, block)| json::CheckedBlock {
            name: block.name.clone(),
            members: compiled.set.as_ref().map_or(block.words.len(), |set| set.blocks[index].members.len()),
            anchors: block.anchors.clone(),
            recruitable: block.recruitable,
        })
        .collect();
    let window = crate::locality::targets::COVERAGE_WINDOW;
    let rules: Vec<json::CheckedRule> = match (&compiled.set, &corpus_ids) {
        (Some(set), Some(ids)) => (0..set.rules.len())
            .map(|r| json::CheckedRule {
                name: set.rules[r].name.clone(),
                covers: Some(
                    ids.chunks(window).map(|w| crate::locality::targets::rule_targets(set, r, w).covered_rows()).sum(),
                ),
            })
            .collect(),
        (Some(set), None) => {
            set.rules.iter().map(|r| json::CheckedRule { name: r.name.clone(), covers: None }).collect()
        }
        _ => spec
            .rules
            .iter()
            .filter(|r| !r.copy)
            .map(|r| json::CheckedRule { name: r.name.clone(), covers: None })
            .collect(),
    };
    // copy rules (METHOD §4) cover the query positions whose cache is not empty
    let copy_rules: Vec<json::CheckedRule> = match (&compiled.set, &corpus_ids) {
        (Some(set), Some(ids)) => set
            .copy_rules
            .iter()
            .map(|rule| json::CheckedRule {
                name: rule.name.clone(),
                covers: Some(
                    ids.chunks(window)
                        .map(|w| {
                            crate::locality::copy_targets::copy_rule_targets(set, rule, w)
                                .iter()
                                .filter(|targets| !targets.is_empty())
                                .count()
                        })
                        .sum(),
                ),
            })
            .collect(),
        _ => spec
            .rules
            .iter()
            .filter(|r| r.copy)
            .map(|r| json::CheckedRule { name: r.name.clone(), covers: None })
            .collect(),
    };
    let checked = json::CheckOutput {
        rules_file: args.rules.display().to_string(),
        vocabulary_given: vocabulary.is_some(),
        corpus_tokens: corpus_ids.as_ref().map(Vec::len),
        blocks,
        written_rules: spec.rules.iter().filter(|r| !r.copy).count(),
        rules,
        copy_rules,
    };
    if args.json {
        return write_out(
            out,
            &(serde_json::to_string_pretty(&checked).map_err(|e| Error::Numeric(e.to_string()))? + "\n"),
        );
    }
    write_out(out, &check_table(&checked, TokenizerKind::from(args.tokenizer), window))
}

pub(super) fn run_fmt(args: FmtArgs, out: &mut dyn Write) -> Result<()> {
    let bytes = std::fs::read(&args.rules).map_err(|e| Error::io(&args.rules, e))?;
    let source =
        crate::dsl::rules_text(bytes).map_err(|message| Error::Config { path: args.rules.clone(), message })?;
    match crate::dsl::format::format(&source) {
        Ok(formatted) if args.write => checkpoint::atomic_write(&args.rules, formatted.as_bytes()),
        Ok(formatted) => write_out(out, &formatted),
        Err(_) => {
            let loaded = crate::dsl::load_source(&args.rules, source)?;
            crate::eprint_lossy!("{}", loaded.render(&loaded.diagnostics));
            Err(Error::Rejected(format!("{}: cannot be formatted until it parses", args.rules.display())))
        }
    }
}

pub(super) fn run_anchors(args: AnchorsArgs, out: &mut dyn Write) -> Result<()> {
    let loaded = loaded_rules(&args.rules)?;
    let text = corpus_text(&args.corpus)?;
    let vocabulary = crate::data::Vocabulary::build(TokenizerKind::Word, &text, 1_000_000);
    let ids = vocabulary.encode(&text);
    let checked = crate::dsl::Checked::new(loaded, Some(&vocabulary));
    let Some(set) = &checked.compiled.set else {
        crate::eprint_lossy!("{}", checked.render());
        return Err(Error::Rejected(format!("{}: fix the errors above first", args.rules.display())));
    };
    let scored = crate::dsl::anchors::score(set, &vocabulary, &ids, args.window, args.max, args.min_gain);
    if args.json {
        return write_out(
            out,
            &(serde_json::to_string_pretty(&scored).map_err(|e| Error::Numeric(e.to_string()))? + "\n"),
        );
    }
    let mut s = format!(
        "anchor scores on {} words: I(X;Y) in bits, X = the token at i, Y = a block member within {} positions\n",
        ids.len(),
        args.window
    );
    for block in &scored {
        s += &format!("\nblock {}  (P(Y) = {:.4})\n", block.block, block.share_near_block);
        s += "  token                 occurrences   I(X;Y) bits   greedy gain bits\n";
        for score in &block.scores {
            let mark = if score.chosen { "  chosen" } else { "" };
            s += &format!(
                "  {:<20}  {:>11}   {:>11.6}   {:>16.6}{mark}\n",
                score.token, score.occurrences, score.mutual_information_bits, score.greedy_gain_bits
            );
        }
    }
    if args.snippet {
        // the blocks as written, with the chosen anchors in place of the old ones: ready to paste back
        s += &format!(
            "\n# anchors chosen by `ailla anchors` (window {}, at most {} per block)\n",
            args.window, args.max
        );
        for (block, scores) in checked.compiled.spec.blocks.iter().zip(&scored) {
            let mut chosen = block.clone();
            chosen.anchors = scores.chosen.clone();
            s += &format!("\n{}\n", crate::dsl::format::block_spec(&chosen));
        }
    }
    write_out(out, &s)
}
