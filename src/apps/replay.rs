//! Replay: JSON lines in, JSON lines out, through the same topology as the live service.
//!
//! Each input line is an event's JSON object with a `topic` field (`requests`, `outcomes`,
//! `telemetry`, `admin`, or the configured full topic name). Each output line is an output's JSON object
//! with its `topic` (`decisions`, `limits`, `breakers`, `alerts`, `predictions`). Lines that fail
//! to decode are handed to the caller with their line number and skipped, as are events stamped
//! too far ahead of the others (`[event_time]`; one is held until the next line says whether
//! time really jumped, see `core/watermarks.rs`). Blank lines are ignored.
//! Events of one stamp go requests first, as `run` takes them (`kafka/merge.rs`).
//! At the end of the input the monitor's last minute is closed, so its alerts are written too.
//! The same input gives byte-identical output. With `[prediction] model` set, the model is loaded
//! (and seeded from `[prediction] history`) before the first line.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, Write};
use std::sync::Arc;

use crate::config::Config;
use crate::core::topology::{Admit, Counted, Counters, TooFarAheadError, Topology};
use crate::wire::decode::{DecodeError, decode_tagged_with};
use crate::wire::events::{InputEvent, InputTopic};
use crate::wire::outputs::Output;

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    pub lines: u64,
    pub events: u64,
    /// Lines skipped: undecodable, or stamped too far ahead.
    pub skipped: u64,
    /// Of those, the events stamped too far ahead.
    pub too_far_ahead: u64,
    pub outputs: BTreeMap<&'static str, u64>,
    pub counters: Counters,
    pub tracked_users: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading input: {0}")]
    Read(io::Error),
    #[error("writing output: {0}")]
    Write(io::Error),
    #[error("encoding output: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Prediction(#[from] crate::history::prediction_setup::PredictionSetupError),
}

/// The most events stamped too far ahead held until the next events say whether time jumped.
const MAX_HELD: usize = 100_000;

/// Why a line was skipped.
#[derive(Debug, thiserror::Error)]
pub enum Skipped {
    #[error(transparent)]
    Undecodable(#[from] DecodeError),
    #[error(transparent)]
    TooFarAhead(#[from] TooFarAheadError),
}

/// Replays `input` into `output`. `on_skip` is told about each line skipped (undecodable, or
/// stamped too far ahead), with its line number.
pub fn replay<R: BufRead, W: Write>(
    cfg: Arc<Config>,
    mut input: R,
    mut output: W,
    mut on_skip: impl FnMut(u64, &Skipped),
) -> Result<ReplaySummary, ReplayError> {
    let topics = cfg.topics.clone();
    // A line names its topic by the short name or by the configured topic name.
    let resolve = |name: &str| InputTopic::from_name(name).or_else(|| topics.input_topic(name));
    let predictor = crate::history::prediction_setup::load_blocking(&cfg.prediction)?;
    let mut r = Replayer {
        topology: Topology::new(cfg.clone()).with_predictor(predictor),
        summary: ReplaySummary::default(),
        outs: Vec::new(),
        held: VecDeque::new(),
        ties: Vec::new(),
        on_skip: &mut on_skip,
    };
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut counts = [0u64; Output::TOPICS.len()];
    for_each_line(&mut input, |line| {
        r.summary.lines += 1;
        let text = line.trim_ascii();
        if text.is_empty() {
            return Ok(());
        }
        match decode_tagged_with(text, resolve, &cfg.limits) {
            Ok(event) => {
                r.summary.events += 1;
                r.take(r.summary.lines, event);
            }
            Err(e) => {
                r.summary.skipped += 1;
                (r.on_skip)(r.summary.lines, &Skipped::Undecodable(e));
                return Ok(());
            }
        }
        for o in r.outs.drain(..) {
            counts[o.kind()] += 1;
            o.write_tagged_line(&mut buf)?;
        }
        if buf.len() >= 60 * 1024 {
            output.write_all(&buf).map_err(ReplayError::Write)?;
            buf.clear();
        }
        Ok(())
    })?;
    r.flush_ties();
    // Refused events with nothing after them: nothing confirmed them.
    r.skip_held();
    r.topology.finish(&mut r.outs);
    for o in r.outs.drain(..) {
        counts[o.kind()] += 1;
        o.write_tagged_line(&mut buf)?;
    }
    let mut summary = std::mem::take(&mut r.summary);
    output.write_all(&buf).map_err(ReplayError::Write)?;
    summary.outputs = Output::TOPICS.into_iter().zip(counts).filter(|&(_, n)| n > 0).collect();
    output.flush().map_err(ReplayError::Write)?;
    summary.counters = r.topology.counters();
    summary.tracked_users = r.topology.tracked_users();
    Ok(summary)
}

/// The most events of one stamp held to put requests first.
const MAX_TIES: usize = 10_000;

/// The processing of decoded events: events of one stamp in the order `run` takes them
/// (requests first: `kafka/merge.rs`), then each event's time checked, and events stamped too
/// far ahead held until the next events say whether time jumped.
struct Replayer<'f, F: FnMut(u64, &Skipped)> {
    topology: Topology,
    summary: ReplaySummary,
    outs: Vec<Output>,
    held: VecDeque<(u64, InputEvent, TooFarAheadError)>,
    /// Events of the latest stamp, with their line numbers.
    ties: Vec<(u64, InputEvent)>,
    on_skip: &'f mut F,
}

impl<F: FnMut(u64, &Skipped)> Replayer<'_, F> {
    /// An event in file order: held while the next ones share its stamp.
    fn take(&mut self, line: u64, event: InputEvent) {
        if self.ties.first().is_some_and(|(_, e)| e.ts() != event.ts()) || self.ties.len() >= MAX_TIES {
            self.flush_ties();
        }
        self.ties.push((line, event));
    }

    /// The events of one stamp: requests first, the rest in file order.
    fn flush_ties(&mut self) {
        let mut ties = std::mem::take(&mut self.ties);
        ties.sort_by_key(|(_, e)| e.topic() != InputTopic::Requests);
        for (line, event) in ties.drain(..) {
            self.step(line, event);
        }
        self.ties = ties;
    }

    fn step(&mut self, line: u64, mut event: InputEvent) {
        let admit = self.topology.admit((event.topic(), 0), event.ts());
        // The events before were refused as too far ahead: this one says whether time really
        // jumped there (another stamp near theirs), or not yet (theirs again).
        match admit {
            Admit::Jumped => {
                for (_, h, _) in std::mem::take(&mut self.held) {
                    self.topology.process_in(0, h, Counted::No, &mut self.outs);
                }
            }
            Admit::TooFarAhead { .. } => {}
            Admit::OnTime | Admit::Late { .. } => self.skip_held(),
        }
        let take = match admit {
            Admit::TooFarAhead { ahead_ms, reference } => self.topology.too_far_ahead(&mut event, ahead_ms, reference),
            Admit::OnTime | Admit::Late { .. } | Admit::Jumped => Ok(()),
        };
        match take {
            Ok(()) => self.topology.process_in(0, event, Counted::No, &mut self.outs),
            Err(e) => {
                // Held in a bounded queue: past it, the oldest is skipped.
                if self.held.len() >= MAX_HELD
                    && let Some((line, _, e)) = self.held.pop_front()
                {
                    self.skip(line, e);
                }
                self.held.push_back((line, event, e));
            }
        }
    }

    fn skip_held(&mut self) {
        for (line, _, e) in std::mem::take(&mut self.held) {
            self.skip(line, e);
        }
    }

    fn skip(&mut self, line: u64, e: TooFarAheadError) {
        self.summary.skipped += 1;
        self.summary.too_far_ahead += 1;
        (self.on_skip)(line, &Skipped::TooFarAhead(e));
    }
}

/// Calls `f` with each line of `input`, without its `\n`. A line that lies within the reader's
/// buffer is borrowed from it; only a line split across two fills is copied.
fn for_each_line<R: BufRead>(input: &mut R, mut f: impl FnMut(&[u8]) -> Result<(), ReplayError>) -> Result<(), ReplayError> {
    let mut partial = Vec::new();
    loop {
        let avail = input.fill_buf().map_err(ReplayError::Read)?;
        if avail.is_empty() {
            return if partial.is_empty() { Ok(()) } else { f(&partial) };
        }
        let filled = avail.len();
        let mut rest = avail;
        if !partial.is_empty() {
            let Some(end) = memchr::memchr(b'\n', rest) else {
                partial.extend_from_slice(rest);
                input.consume(filled);
                continue;
            };
            partial.extend_from_slice(&rest[..end]);
            f(&partial)?;
            partial.clear();
            rest = &rest[end + 1..];
        }
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', rest) {
            f(&rest[start..end])?;
            start = end + 1;
        }
        partial.extend_from_slice(&rest[start..]);
        input.consume(filled);
    }
}

/// `surgeguard replay`.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub config: crate::apps::cli::ConfigArg,
    /// Input: one JSON object per line with a `topic` field (`-` for stdin).
    pub input: std::path::PathBuf,
    /// Output file (default, or `-`: stdout).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

pub fn main(args: &ReplayArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::BufReader;
    let cfg = args.config.load()?;
    let input = args.input.as_path();
    let reader: Box<dyn BufRead> = if input == std::path::Path::new("-") {
        Box::new(BufReader::with_capacity(1 << 16, std::io::stdin().lock()))
    } else {
        let f = std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
        Box::new(BufReader::with_capacity(1 << 16, f))
    };
    let writer = crate::apps::cli::output(args.out.as_deref())?;
    let started = std::time::Instant::now();
    let summary = replay(cfg, reader, writer, |line, err| {
        eprintln!("{}:{line}: skipped: {err}", input.display());
    })?;
    let secs = started.elapsed().as_secs_f64();
    let outputs: Vec<String> = summary.outputs.iter().map(|(t, n)| format!("{t} {n}")).collect();
    let c = summary.counters;
    eprintln!(
        "replayed {} events from {} lines in {secs:.2} s ({:.0} events/s); skipped {} undecodable, {} too far ahead; outputs: {}; decisions: {} allow, {} grace, {} throttle; {} users tracked",
        summary.events,
        summary.lines,
        summary.events as f64 / secs.max(1e-9),
        summary.skipped - summary.too_far_ahead,
        summary.too_far_ahead,
        if outputs.is_empty() { "none".into() } else { outputs.join(", ") },
        c.allowed,
        c.graced,
        c.throttled,
        summary.tracked_users,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(text: &[u8], capacity: usize) -> Vec<Vec<u8>> {
        let mut input = io::BufReader::with_capacity(capacity, text);
        let mut got = Vec::new();
        for_each_line(&mut input, |l| {
            got.push(l.to_vec());
            Ok(())
        })
        .expect("in-memory input");
        got
    }

    #[test]
    fn lines_split_across_buffer_fills_come_out_whole() {
        let text = b"first line\n\nsecond, longer than the buffer\nx\nlast without newline";
        let want: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
        for capacity in [1, 2, 3, 7, 16, 1 << 16] {
            assert_eq!(lines_of(text, capacity), want, "capacity {capacity}");
        }
        let mut ended = text.to_vec();
        ended.push(b'\n');
        assert_eq!(lines_of(&ended, 5), want, "a final newline adds no empty line");
        assert!(lines_of(b"", 4).is_empty());
    }
}
