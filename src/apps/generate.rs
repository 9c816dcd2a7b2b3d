//! `surgeguard gen history`: a synthetic request history with the shapes demand has, for demos
//! and tests of fitting and backtesting.
//!
//! The request rate per minute is `peak_rpm` × a daily profile × a weekly profile × growth ×
//! a holiday factor × a surge factor, and the count of each minute is drawn from a Poisson
//! distribution with that mean:
//! - **daily:** quiet nights (0.2), rising from 06:00 to a peak at 14:00 UTC, falling to 22:00;
//! - **weekly:** weekdays 1.0, Saturday 0.55, Sunday 0.45;
//! - **growth:** `growth_per_year` (30 % by default), linear;
//! - **holidays:** 1 January, 1 May, 24–26 and 31 December run at 35 %;
//! - **surges:** on about a third of the Mondays, the seed's Monday morning: from 09:00 UTC
//!   demand ramps to 4× over 15 minutes, holds for 30 and falls back by 10:00.
//!
//! Users are drawn with a heavy tail (a tenth of them send half the requests); 5 % are
//! enterprise, 25 % pro, the rest free. Requests are 75 % `standard`, 20 % `batch` (cost 2),
//! 5 % `critical_business`. The holidays and surges are also written to `DIR/events.csv`
//! (`start,end,label`), the external-factors file `fit --events` reads. The same seed gives
//! the same history.

use std::io::Write;
use std::path::Path;

use chrono::{Datelike, Timelike};

use crate::forecast::rng::SplitMix64;
use crate::history::parquet::{HistoryError, HistoryWriter};
use crate::wire::events::RequestEvent;
use crate::wire::time::Millis;

#[derive(Debug, Clone)]
pub struct HistoryOptions {
    pub days: u32,
    /// First day, at 00:00 UTC.
    pub start: Millis,
    pub seed: u64,
    /// Requests per minute at the daily peak of a weekday, before growth.
    pub peak_rpm: f64,
    pub growth_per_year: f64,
    pub users: u32,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        // 2026-01-05T00:00:00Z, a Monday.
        HistoryOptions { days: 28, start: Millis(1_767_571_200_000), seed: 7, peak_rpm: 600.0, growth_per_year: 0.3, users: 2000 }
    }
}

/// What a generation wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generated {
    pub rows: u64,
    pub files: usize,
    pub holidays: u32,
    pub surges: u32,
}

const MINUTE: i64 = 60_000;
const DAY: i64 = 24 * 60 * MINUTE;

fn daily(hour: f64) -> f64 {
    if (6.0..22.0).contains(&hour) {
        // 0.2 at 06:00 and 22:00, 1.0 at 14:00.
        0.2 + 0.8 * (std::f64::consts::PI * (hour - 6.0) / 16.0).sin()
    } else {
        0.2
    }
}

fn weekly(weekday: chrono::Weekday) -> f64 {
    match weekday {
        chrono::Weekday::Sat => 0.55,
        chrono::Weekday::Sun => 0.45,
        _ => 1.0,
    }
}

fn is_holiday(date: chrono::NaiveDate) -> bool {
    matches!((date.month(), date.day()), (1, 1) | (5, 1) | (12, 24) | (12, 25) | (12, 26) | (12, 31))
}

/// The surge factor `minutes` after 09:00 on a surge day.
fn surge(minutes: f64) -> f64 {
    match minutes {
        m if (0.0..15.0).contains(&m) => 1.0 + 3.0 * m / 15.0,
        m if (15.0..45.0).contains(&m) => 4.0,
        m if (45.0..60.0).contains(&m) => 4.0 - 3.0 * (m - 45.0) / 15.0,
        _ => 1.0,
    }
}

/// The mean requests per minute at `t` (surge days given).
pub fn rate(opts: &HistoryOptions, t: Millis, surge_day: bool) -> f64 {
    let Some(dt) = chrono::DateTime::from_timestamp_millis(t.0) else { return 0.0 };
    let hour = f64::from(dt.hour()) + f64::from(dt.minute()) / 60.0;
    let days = (t.0 - opts.start.0) as f64 / DAY as f64;
    let mut r = opts.peak_rpm * daily(hour) * weekly(dt.weekday()) * (1.0 + opts.growth_per_year * days / 365.0);
    if is_holiday(dt.date_naive()) {
        r *= 0.35;
    }
    if surge_day {
        r *= surge((hour - 9.0) * 60.0);
    }
    r
}

/// A Poisson draw with mean `lambda` (Knuth's method for small means, the normal approximation
/// above 30).
fn poisson(rng: &mut SplitMix64, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 30.0 {
        // Box-Muller.
        let (u1, u2) = (rng.unit().max(1e-12), rng.unit());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        return (lambda + lambda.sqrt() * z).round().max(0.0) as u64;
    }
    let limit = (-lambda).exp();
    let (mut k, mut p) = (0, 1.0);
    loop {
        p *= rng.unit();
        if p <= limit {
            return k;
        }
        k += 1;
    }
}

/// Generates the history into `dir`, calling `progress` after each day with the days done.
pub fn generate(opts: &HistoryOptions, dir: &Path, mut progress: impl FnMut(u32)) -> Result<Generated, HistoryError> {
    std::fs::create_dir_all(dir).map_err(|source| HistoryError::Io { path: dir.to_path_buf(), source })?;
    let mut rng = SplitMix64::new(opts.seed);
    let mut writer = HistoryWriter::new(dir, &format!("gen-{}", opts.seed));
    let mut out = Generated::default();
    let mut factors = String::from("start,end,label\n");
    let users = opts.users.max(1);
    let mut seq = 0u64;
    let mut offsets: Vec<i64> = Vec::new();
    for day in 0..opts.days {
        let day_start = Millis(opts.start.0 + i64::from(day) * DAY);
        let date = chrono::DateTime::from_timestamp_millis(day_start.0).ok_or(HistoryError::BadTime(day_start))?.date_naive();
        let surge_day = date.weekday() == chrono::Weekday::Mon && rng.below(3) == 0;
        if is_holiday(date) {
            out.holidays += 1;
            factors.push_str(&format!("{},{},holiday\n", day_start, Millis(day_start.0 + DAY)));
        }
        if surge_day {
            out.surges += 1;
            let at = day_start.0 + 9 * 60 * MINUTE;
            factors.push_str(&format!("{},{},surge\n", Millis(at), Millis(at + 60 * MINUTE)));
        }
        for minute in 0..24 * 60 {
            let t0 = day_start.0 + minute * MINUTE;
            let n = poisson(&mut rng, rate(opts, Millis(t0), surge_day));
            offsets.clear();
            offsets.extend((0..n).map(|_| rng.below(MINUTE as u64) as i64));
            offsets.sort_unstable();
            for &o in &offsets {
                // A tenth of the users send half the requests.
                let user = if rng.below(2) == 0 { rng.below(u64::from(users / 10).max(1)) } else { rng.below(u64::from(users)) };
                let tier = match user % 20 {
                    0 => "enterprise",
                    1..=5 => "pro",
                    _ => "free",
                };
                let (request_type, cost) = match rng.below(20) {
                    0 => ("critical_business", 1),
                    1..=4 => ("batch", 2),
                    _ => ("standard", 1),
                };
                seq += 1;
                let e = RequestEvent {
                    id: format!("h{}-{seq}", opts.seed).into(),
                    ts: Millis(t0 + o),
                    user_id: format!("user-{user}").into(),
                    tier: tier.into(),
                    request_type: request_type.into(),
                    cost,
                };
                writer.write(&e)?;
            }
        }
        progress(day + 1);
    }
    let (files, rows) = writer.finish()?;
    out.rows = rows;
    out.files = files.len();
    let path = dir.join("events.csv");
    std::fs::File::create(&path).and_then(|mut f| f.write_all(factors.as_bytes())).map_err(|source| HistoryError::Io { path, source })?;
    Ok(out)
}

/// `surgeguard gen`.
#[derive(clap::Subcommand, Debug)]
pub enum GenCommand {
    /// The seed's Monday-morning surge (50 → 150 → 300 users over 15 minutes) as replay input:
    /// requests, upstream outcomes and host telemetry, one JSON object per line.
    Surge {
        /// Multiplies the number of users.
        #[arg(long, default_value_t = 1)]
        scale: u32,
        /// Random seed (the same seed gives the same file).
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Requests only, no outcomes or telemetry.
        #[arg(long)]
        requests_only: bool,
        /// Output file (default, or `-`: stdout).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// A synthetic request history in Parquet (daily and weekly seasonality, growth, holidays,
    /// Monday-morning surges), partitioned by date and hour, with its holidays and surges in
    /// DIR/events.csv.
    History {
        /// Days of history.
        #[arg(long)]
        days: u32,
        /// Output directory.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Random seed (the same seed gives the same history).
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Requests per minute at a weekday's daily peak, before growth.
        #[arg(long, default_value_t = 600.0)]
        peak_rpm: f64,
        /// First day (UTC), YYYY-MM-DD.
        #[arg(long, default_value = "2026-01-05")]
        start: String,
    },
}

pub fn main(command: &GenCommand) -> anyhow::Result<()> {
    match command {
        GenCommand::Surge { scale, seed, requests_only, out } => gen_surge(*scale, *seed, *requests_only, out.as_deref()),
        GenCommand::History { days, out, seed, peak_rpm, start } => gen_history(*days, out, *seed, *peak_rpm, start),
    }
}

fn gen_surge(scale: u32, seed: u64, requests_only: bool, out: Option<&Path>) -> anyhow::Result<()> {
    use crate::apps::scenario::{Surge, monday_surge};
    use std::io::Write;
    anyhow::ensure!(scale >= 1, "--scale must be at least 1");
    let events = monday_surge(&Surge { seed, scale, backend: !requests_only, ..Surge::default() });
    let mut writer = crate::apps::cli::output(out)?;
    let mut buf = Vec::with_capacity(1 << 16);
    for e in &events {
        e.write_tagged_line(&mut buf)?;
        if buf.len() > 60_000 {
            writer.write_all(&buf)?;
            buf.clear();
        }
    }
    writer.write_all(&buf)?;
    writer.flush()?;
    eprintln!("generated {} events", events.len());
    Ok(())
}

fn gen_history(days: u32, out: &Path, seed: u64, peak_rpm: f64, start: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    anyhow::ensure!(days >= 1, "--days must be at least 1");
    anyhow::ensure!(peak_rpm.is_finite() && peak_rpm > 0.0, "--peak-rpm must be a positive number");
    let start = chrono::NaiveDate::parse_from_str(start, "%Y-%m-%d").with_context(|| format!("--start {start:?}: expected YYYY-MM-DD"))?;
    let start = Millis(start.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_millis()).unwrap_or(0));
    let opts = HistoryOptions { days, start, seed, peak_rpm, ..HistoryOptions::default() };
    let bar = indicatif::ProgressBar::new(u64::from(days));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} days {elapsed} (eta {eta})").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let done = generate(&opts, out, |d| bar.set_position(u64::from(d)))?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} requests in {} files under {} ({} holidays, {} surges listed in events.csv) in {:.1} s",
        done.rows,
        done.files,
        out.display(),
        done.holidays,
        done.surges,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_has_the_documented_shape() {
        let o = HistoryOptions { growth_per_year: 0.0, ..HistoryOptions::default() };
        let at = |day: i64, hour: i64| Millis(o.start.0 + day * DAY + hour * 60 * MINUTE);
        // Monday 14:00 is the peak; 03:00 the night floor.
        assert!((rate(&o, at(0, 14), false) - 600.0).abs() < 1e-9);
        assert!((rate(&o, at(0, 3), false) - 120.0).abs() < 1e-9);
        // Saturday (day 5) at 55 %.
        assert!((rate(&o, at(5, 14), false) - 330.0).abs() < 1e-9);
        // A surge Monday at 09:30 runs at 4× the hour's normal rate.
        assert!((rate(&o, at(0, 9).plus_ms(30 * MINUTE), true) / rate(&o, at(0, 9).plus_ms(30 * MINUTE), false) - 4.0).abs() < 1e-9);
        // Growth: 30 % a year, linear in time (365 days and 14 hours after the start here).
        let g = HistoryOptions::default();
        let want = 1.0 + 0.3 * (365.0 + 14.0 / 24.0) / 365.0;
        assert!((rate(&g, at(365, 14), false) / rate(&o, at(365, 14), false) - want).abs() < 1e-9);
    }

    #[test]
    fn poisson_draws_have_the_mean_they_were_asked_for() {
        let mut rng = SplitMix64::new(1);
        for lambda in [0.5, 7.0, 200.0] {
            let n = 20_000;
            let mean = (0..n).map(|_| poisson(&mut rng, lambda) as f64).sum::<f64>() / f64::from(n);
            assert!((mean - lambda).abs() < 0.05 * lambda.max(1.0), "lambda {lambda}: mean {mean}");
        }
    }
}
