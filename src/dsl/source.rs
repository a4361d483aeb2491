//! Where rules text is read: a run's [`RulesSource`] loaded into a compiled [`RuleSpec`].
//!
//! The engine-facing `locality` module names sources and holds specs; reading and compiling `.rules`
//! text is the language's job, so it lives here and data flows one way: text → spec.

use crate::locality::rules::BUNDLED_RULES;
use crate::locality::{RuleSpec, RulesSource};
use crate::{Error, Result};

/// Compiles `.rules` text to a spec, turning diagnostics into one error that shows them all.
fn spec_from_rules_text(
    loaded: super::Loaded,
    path: &std::path::Path,
    layout: Option<super::ModelLayout>,
) -> Result<RuleSpec> {
    let compiled = super::compile_with(&loaded, None, super::CompileOptions { all_warnings: false, layout });
    let mut errors = loaded.diagnostics.clone();
    errors.extend(
        compiled.diagnostics.into_iter().filter(|d| d.severity >= codespan_reporting::diagnostic::Severity::Error),
    );
    if errors.is_empty() {
        Ok(compiled.spec)
    } else {
        Err(Error::Config {
            path: path.to_path_buf(),
            message: format!("the rules have errors:\n{}", loaded.render(&errors)),
        })
    }
}

impl RulesSource {
    /// The source's rules as a spec: `.rules` text compiled (every diagnostic of an error shown at
    /// once), or a spec in YAML or JSON.
    pub fn load(&self) -> Result<RuleSpec> {
        self.load_for(None)
    }

    /// As [`RulesSource::load`], with every `in layers` / `in heads` index checked against the
    /// model's `layout` when it is known.
    pub fn load_for(&self, layout: Option<super::ModelLayout>) -> Result<RuleSpec> {
        match self {
            RulesSource::Bundled => {
                let path = std::path::Path::new("rules/default.rules");
                spec_from_rules_text(super::load_source(path, BUNDLED_RULES.to_string())?, path, layout)
            }
            RulesSource::File(path) => match path.extension().and_then(|e| e.to_str()) {
                Some("yaml" | "yml" | "json") => {
                    let spec = RuleSpec::load(path)?;
                    if let Some(layout) = layout {
                        check_spec_layout(&spec, layout, path)?;
                    }
                    Ok(spec)
                }
                _ => spec_from_rules_text(super::load(path)?, path, layout),
            },
        }
    }
}

/// A spec written as YAML or JSON names layers and heads the model has.
fn check_spec_layout(spec: &RuleSpec, layout: super::ModelLayout, path: &std::path::Path) -> Result<()> {
    for rule in &spec.rules {
        let clauses = [(&rule.layers, layout.layers, "layers"), (&rule.heads, layout.heads, "heads")];
        for (indices, available, what) in clauses {
            if let Some(bad) = indices.iter().flatten().find(|&&i| i >= available) {
                return Err(Error::Config {
                    path: path.to_path_buf(),
                    message: format!(
                        "rule `{}` names {what} {bad}, but the model has {available} {what}, numbered 0 to {}",
                        rule.name,
                        available.saturating_sub(1)
                    ),
                });
            }
        }
    }
    Ok(())
}
