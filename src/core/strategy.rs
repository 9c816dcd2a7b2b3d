//! The throttling strategy table: which strategy a throttled request gets, by load severity, tier
//! and request type. Rules are written in config in order (first match wins); here they are
//! compiled into a dense table so a lookup is one index.

use crate::config::{StrategyKind, ThrottleRule};
use crate::wire::outputs::{LoadSeverity, Strategy};

const SEVERITIES: [LoadSeverity; 3] = [LoadSeverity::Normal, LoadSeverity::High, LoadSeverity::Critical];

/// `[severity][tier][request_type]` → strategy.
#[derive(Debug, Clone)]
pub struct StrategyTable {
    tiers: usize,
    request_types: usize,
    cells: Vec<Strategy>,
}

fn strategy(kind: StrategyKind, seconds: u32) -> Strategy {
    match kind {
        StrategyKind::Delay => Strategy::Delay { seconds },
        StrategyKind::RejectWithBackoff => Strategy::RejectWithBackoff { seconds },
        StrategyKind::QueueWithTimeout => Strategy::QueueWithTimeout { seconds },
    }
}

impl StrategyTable {
    /// Compiles the rules for the given tier and request type names (in index order). Validation
    /// guarantees a catch-all rule per severity; without one a cell falls back to a 1 s delay.
    pub fn compile(rules: &[ThrottleRule], tiers: &[&str], request_types: &[&str]) -> Self {
        let mut cells = Vec::with_capacity(SEVERITIES.len() * tiers.len() * request_types.len());
        for sev in SEVERITIES {
            for tier in tiers {
                for rt in request_types {
                    let hit = rules.iter().find(|r| {
                        r.severity == sev
                            && (r.tiers.is_empty() || r.tiers.iter().any(|t| t == tier))
                            && (r.request_types.is_empty() || r.request_types.iter().any(|t| t == rt))
                    });
                    cells.push(hit.map_or(Strategy::Delay { seconds: 1 }, |r| strategy(r.strategy, r.seconds)));
                }
            }
        }
        StrategyTable { tiers: tiers.len(), request_types: request_types.len(), cells }
    }

    pub fn lookup(&self, severity: LoadSeverity, tier: usize, request_type: usize) -> Strategy {
        let s = match severity {
            LoadSeverity::Normal => 0,
            LoadSeverity::High => 1,
            LoadSeverity::Critical => 2,
        };
        self.cells[(s * self.tiers + tier) * self.request_types + request_type]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The seed's table, cell by cell, from the default config.
    #[test]
    fn seed_throttling_table() {
        let c = Config::default();
        let tiers = ["enterprise", "free", "pro"];
        let rts = ["batch", "critical_business", "standard"];
        let t = StrategyTable::compile(&c.throttle, &tiers, &rts);
        use LoadSeverity::*;
        for (ti, tier) in tiers.iter().enumerate() {
            for (ri, rt) in rts.iter().enumerate() {
                let critical = if *tier == "enterprise" { Strategy::Delay { seconds: 5 } } else { Strategy::RejectWithBackoff { seconds: 30 } };
                assert_eq!(t.lookup(Critical, ti, ri), critical, "critical {tier}/{rt}");
                let high = if *rt == "critical_business" { Strategy::Delay { seconds: 2 } } else { Strategy::QueueWithTimeout { seconds: 10 } };
                assert_eq!(t.lookup(High, ti, ri), high, "high {tier}/{rt}");
                assert_eq!(t.lookup(Normal, ti, ri), Strategy::Delay { seconds: 1 }, "normal {tier}/{rt}");
            }
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let rule =
            |tiers: Vec<String>, seconds| ThrottleRule { severity: LoadSeverity::Normal, tiers, request_types: vec![], strategy: StrategyKind::Delay, seconds };
        let rules = vec![rule(vec![], 7), rule(vec!["pro".into()], 9)];
        let t = StrategyTable::compile(&rules, &["pro"], &["standard"]);
        assert_eq!(t.lookup(LoadSeverity::Normal, 0, 0), Strategy::Delay { seconds: 7 });
    }
}
