//! The locality dial (METHOD §2–§6): compiled rules, per-row target sets, the margin bias and the
//! group-sparsity penalty as an attention hook, λ schedules, metrics and certified bounds.

pub mod bounds;
pub mod copy_paths;
pub mod copy_targets;
pub mod device_rules;
pub mod hook;
pub mod metrics;
pub mod rules;
pub mod schedule;
pub mod score;
pub mod targets;

pub use copy_targets::copy_targets;
pub use hook::{DialSettings, LocalityHook};
pub use rules::{RuleSet, RuleSpec, RulesSource};
pub use schedule::LambdaSchedule;
pub use score::{Conditions, RulesAt};
pub use targets::{BatchTargets, RowSets};
