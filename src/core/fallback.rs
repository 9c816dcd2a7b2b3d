//! The fallback plan for a dependency whose breaker does not let calls through, resolved against
//! the other breakers: usable alternatives first (in configured preference), then cache, rules and
//! template, in the configured order.

use std::sync::Arc;

use crate::config::{FallbackConfig, FallbackKind};
use crate::wire::outputs::{BreakerStateKind, FallbackStep};

/// Whether a dependency in this state takes calls (an alternative must).
pub fn takes_calls(state: BreakerStateKind) -> bool {
    matches!(state, BreakerStateKind::Closed | BreakerStateKind::Disabled | BreakerStateKind::MetricsOnly)
}

/// Resolves the plan. `state_of` gives an alternative's breaker state (a dependency never seen
/// is closed: nothing has failed).
pub fn plan(cfg: &FallbackConfig, alternatives: &[Arc<str>], state_of: impl Fn(&str) -> BreakerStateKind) -> Vec<FallbackStep> {
    let mut steps = Vec::new();
    for kind in &cfg.order {
        match kind {
            FallbackKind::Alternative => {
                steps.extend(alternatives.iter().filter(|a| takes_calls(state_of(a))).map(|a| FallbackStep::Alternative { dependency: a.clone() }))
            }
            FallbackKind::Cache => steps.push(FallbackStep::Cache { min_similarity: cfg.cache_min_similarity, min_quality: cfg.cache_min_quality }),
            FallbackKind::Rules => steps.push(FallbackStep::Rules),
            FallbackKind::Template => steps.push(FallbackStep::Template),
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use BreakerStateKind::*;

    #[test]
    fn closed_alternatives_first_then_cache_rules_template() {
        let cfg = FallbackConfig::default();
        let alts: Vec<Arc<str>> = vec!["b".into(), "c".into(), "d".into()];
        let p = plan(&cfg, &alts, |d| match d {
            "b" => Open,
            "c" => Closed,
            _ => HalfOpen,
        });
        assert_eq!(
            p,
            vec![
                FallbackStep::Alternative { dependency: "c".into() },
                FallbackStep::Cache { min_similarity: 0.7, min_quality: 0.6 },
                FallbackStep::Rules,
                FallbackStep::Template,
            ]
        );
    }

    #[test]
    fn order_is_configurable() {
        let cfg = FallbackConfig { order: vec![FallbackKind::Template, FallbackKind::Alternative], ..FallbackConfig::default() };
        let p = plan(&cfg, &["x".into()], |_| Closed);
        assert_eq!(p, vec![FallbackStep::Template, FallbackStep::Alternative { dependency: "x".into() }]);
    }
}
