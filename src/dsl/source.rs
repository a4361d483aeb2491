//! Where rules text is read: a run's [`RulesSource`] loaded into a compiled [`RuleSpec`].
//!
//! The engine-facing `locality` module names sources and holds specs; reading and compiling `.rules`
//! text is the language's job, so it lives here and data flows one way: text → spec.

use crate::locality::rules::BUNDLED_RULES;
use crate::locality::{RuleSpec, RulesSource};
use crate::{Error, Result};

/// Compiles `.rules` text to a spec, turning diagnostics into one error that shows them all.
fn spec_from_rules_text(loaded: super::Loaded, path: &std::path::Path) -> Result<RuleSpec> {
    let compiled = super::compile(&loaded, None);
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
        match self {
            RulesSource::Bundled => {
                let path = std::path::Path::new("rules/default.rules");
                spec_from_rules_text(super::load_source(path, BUNDLED_RULES.to_string())?, path)
            }
            RulesSource::File(path) => match path.extension().and_then(|e| e.to_str()) {
                Some("yaml" | "yml" | "json") => RuleSpec::load(path),
                _ => spec_from_rules_text(super::load(path)?, path),
            },
        }
    }
}
