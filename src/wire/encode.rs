//! Outputs → JSON bytes. Decisions are one per request, so they dominate the output by volume:
//! they have a writer of their own that appends the exact bytes serde_json would write (the
//! tests hold it to that, escapes included), without going through serde's visitor machinery.
//! Every other output goes through serde_json.

use crate::wire::outputs::{Decision, DecisionKind, LoadSeverity, Output, Strategy};

/// The wire form of outputs (kept here, beside the writers, so `outputs` depends on nothing
/// that depends on it).
impl Output {
    /// Appends the JSON value to `buf`.
    pub fn write_json(&self, buf: &mut Vec<u8>) -> serde_json::Result<()> {
        match self {
            Output::Decision(v) => write_decision(buf, v),
            Output::Limit(v) => serde_json::to_writer(&mut *buf, v),
            Output::Breaker(v) => serde_json::to_writer(&mut *buf, v),
            Output::Prediction(v) => serde_json::to_writer(&mut *buf, v),
            Output::Alert(v) => serde_json::to_writer(&mut *buf, v),
        }
    }

    /// Appends the replay form: the JSON value with a leading `"topic"` field, then a newline.
    pub fn write_tagged_line(&self, buf: &mut Vec<u8>) -> serde_json::Result<()> {
        buf.extend_from_slice(b"{\"topic\":\"");
        buf.extend_from_slice(self.topic().as_bytes());
        buf.push(b'"');
        let start = buf.len();
        self.write_json(buf)?;
        // Every output is a non-empty JSON object: its own `{` becomes the `,` after the topic.
        buf[start] = b',';
        buf.push(b'\n');
        Ok(())
    }
}

/// Appends `s` as a JSON string. Strings without a byte that needs escaping (the usual case: ids,
/// tier names) are copied as they are; the others are escaped by serde_json.
pub(crate) fn write_str(buf: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    // A fold without early exit, so it compiles to a vectorised scan.
    let needs_escape = s.bytes().fold(false, |acc, b| acc | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if needs_escape {
        return serde_json::to_writer(&mut *buf, s);
    }
    buf.reserve(s.len() + 2);
    buf.push(b'"');
    buf.extend_from_slice(s.as_bytes());
    buf.push(b'"');
    Ok(())
}

fn write_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn decision_kind(k: DecisionKind) -> &'static [u8] {
    match k {
        DecisionKind::Allow => b"\"allow\"",
        DecisionKind::AllowWithGrace => b"\"allow_with_grace\"",
        DecisionKind::Throttle => b"\"throttle\"",
    }
}

fn severity(s: LoadSeverity) -> &'static [u8] {
    match s {
        LoadSeverity::Normal => b"\"normal\"",
        LoadSeverity::High => b"\"high\"",
        LoadSeverity::Critical => b"\"critical\"",
    }
}

/// Appends `d` as a JSON object, byte for byte what `serde_json::to_writer(buf, d)` writes.
pub(crate) fn write_decision(buf: &mut Vec<u8>, d: &Decision) -> serde_json::Result<()> {
    buf.extend_from_slice(b"{\"request_id\":");
    write_str(buf, &d.request_id)?;
    let mut ts = [0u8; 24];
    d.ts.write_rfc3339(&mut ts);
    buf.extend_from_slice(b",\"ts\":\"");
    buf.extend_from_slice(&ts);
    buf.extend_from_slice(b"\",\"user_id\":");
    write_str(buf, &d.user_id)?;
    buf.extend_from_slice(b",\"tier\":");
    write_str(buf, &d.tier)?;
    buf.extend_from_slice(b",\"request_type\":");
    write_str(buf, &d.request_type)?;
    buf.extend_from_slice(b",\"decision\":");
    buf.extend_from_slice(decision_kind(d.decision));
    if let Some(s) = d.strategy {
        let name: &[u8] = match s {
            Strategy::Delay { .. } => b",\"strategy\":{\"delay\":{\"seconds\":",
            Strategy::RejectWithBackoff { .. } => b",\"strategy\":{\"reject_with_backoff\":{\"seconds\":",
            Strategy::QueueWithTimeout { .. } => b",\"strategy\":{\"queue_with_timeout\":{\"seconds\":",
        };
        buf.extend_from_slice(name);
        write_u64(buf, u64::from(s.seconds()));
        buf.extend_from_slice(b"}}");
    }
    buf.extend_from_slice(b",\"limit\":");
    write_u64(buf, u64::from(d.limit));
    buf.extend_from_slice(b",\"remaining\":");
    write_u64(buf, u64::from(d.remaining));
    buf.extend_from_slice(b",\"reset_s\":");
    write_u64(buf, d.reset_s);
    buf.extend_from_slice(b",\"policy\":");
    write_str(buf, &d.policy)?;
    buf.extend_from_slice(b",\"severity\":");
    buf.extend_from_slice(severity(d.severity));
    if let Some(t) = &d.unknown_tier {
        buf.extend_from_slice(b",\"unknown_tier\":");
        write_str(buf, t)?;
    }
    if let Some(t) = &d.unknown_request_type {
        buf.extend_from_slice(b",\"unknown_request_type\":");
        write_str(buf, t)?;
    }
    buf.push(b'}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::time::Millis;
    use proptest::prelude::{any, proptest};
    use std::sync::Arc;

    fn decision(text: &str, strategy: Option<Strategy>, unknown: bool) -> Decision {
        Decision {
            request_id: compact_str::format_compact!("req-{text}"),
            ts: Millis(1_764_493_200_123),
            user_id: text.into(),
            tier: Arc::from(text),
            request_type: Arc::from("critical_business"),
            decision: DecisionKind::Throttle,
            strategy,
            limit: u32::MAX,
            remaining: 0,
            reset_s: u64::MAX,
            policy: Arc::from("600;w=60"),
            severity: LoadSeverity::Critical,
            unknown_tier: unknown.then(|| compact_str::format_compact!("{text}\u{7f}")),
            unknown_request_type: unknown.then(|| "x\"y".into()),
        }
    }

    fn same_as_serde(d: &Decision) {
        let mut ours = Vec::new();
        write_decision(&mut ours, d).expect("writes");
        let theirs = serde_json::to_vec(d).expect("serialises");
        assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
    }

    #[test]
    fn decisions_match_serde_for_every_shape() {
        let strategies =
            [None, Some(Strategy::Delay { seconds: 5 }), Some(Strategy::RejectWithBackoff { seconds: 30 }), Some(Strategy::QueueWithTimeout { seconds: 0 })];
        for kind in [DecisionKind::Allow, DecisionKind::AllowWithGrace, DecisionKind::Throttle] {
            for severity in [LoadSeverity::Normal, LoadSeverity::High, LoadSeverity::Critical] {
                for s in strategies {
                    for unknown in [false, true] {
                        let mut d = decision("user-1", s, unknown);
                        d.decision = kind;
                        d.severity = severity;
                        same_as_serde(&d);
                    }
                }
            }
        }
    }

    #[test]
    fn strings_needing_escapes_match_serde() {
        for text in ["a\"b", "back\\slash", "tab\there", "nul\u{0}", "\u{1f}", "é ✓ \u{2028}", ""] {
            same_as_serde(&decision(text, None, true));
        }
    }

    proptest! {
        #[test]
        fn any_string_matches_serde(text in any::<String>(), ts in -62_135_596_800_000i64..253_402_300_799_999) {
            let mut d = decision(&text, Some(Strategy::Delay { seconds: 1 }), true);
            d.ts = Millis(ts);
            same_as_serde(&d);
        }
    }
}
