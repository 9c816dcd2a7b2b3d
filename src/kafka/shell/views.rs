//! The global views for the `Shell`: the other instances' usage records folded every tick, and
//! the fold's outputs (alerts of closed minutes, predictions, predicted limits) published by the
//! leader or kept by a follower for the day it leads (`kafka/usage.rs`, `core/usage.rs`).

use crate::kafka::shared::lock;
use crate::kafka::shell::{RunError, Shell, UNTRACKED};
use crate::wire::outputs::Output;
use crate::wire::time::Millis;

impl Shell<'_> {
    /// Reads the usage topic with `reader` from now on (`tick`).
    pub(crate) fn read_usage(&mut self, reader: crate::kafka::usage::UsageReader) {
        self.usage = Some(reader);
    }

    /// Folds the other instances' usage records that have come; the leader publishes what
    /// closing their cells produced (alerts, predictions, predicted limits), as `wall_clock`.
    pub(super) async fn take_usage(&mut self) -> Result<(), RunError> {
        let Some(reader) = self.usage.as_mut() else { return Ok(()) };
        let mut outs = Vec::new();
        {
            let mut sh = lock(&self.shared);
            if let Some(t) = reader.poll(&mut sh, &mut outs) {
                self.leadership.leader_folded_to(t);
            }
            self.metrics.usage_records.set(i64::try_from(reader.records).unwrap_or(i64::MAX));
            self.metrics.usage_late.set(i64::try_from(sh.topology.usage_late()).unwrap_or(i64::MAX));
            if let Some(t) = sh.topology.usage_closed_to() {
                self.metrics.usage_closed_to.set(t.0.div_euclid(1000));
            }
        }
        if self.leadership.leading() && !outs.is_empty() {
            self.metrics.count_outputs(&outs);
            for o in &outs {
                self.publish(o, Box::new((UNTRACKED, -1))).await?;
            }
            self.transactions.touched();
        }
        self.publish_fold().await
    }

    /// The global views' outputs the topology made since the last call (`Leadership::
    /// fold_outputs`): the leader publishes them (no input offset waits for them: after a
    /// crash the restored usage closes its cells again), a follower keeps them. The leader's
    /// usage records then say how far it published.
    pub(crate) async fn publish_fold(&mut self) -> Result<(), RunError> {
        let (made, closed_to) = {
            let mut sh = lock(&self.shared);
            (sh.topology.take_fold_outputs(), sh.topology.usage_closed_to())
        };
        self.publish_fold_taken(made, closed_to).await
    }

    /// `publish_fold` with what the caller took from the topology under its own lock.
    pub(super) async fn publish_fold_taken(&mut self, made: Vec<(Millis, Output)>, closed_to: Option<Millis>) -> Result<(), RunError> {
        let claim = if self.leadership.leading() { closed_to } else { None };
        if made.is_empty() && claim == self.published_fold_to {
            return Ok(());
        }
        let outs = self.leadership.fold_outputs(made);
        self.metrics.count_outputs(&outs);
        for o in &outs {
            self.publish(o, Box::new((UNTRACKED, -1))).await?;
        }
        if !outs.is_empty() {
            self.transactions.touched();
        }
        if claim != self.published_fold_to {
            self.published_fold_to = claim;
            lock(&self.shared).published_fold_to = claim;
        }
        Ok(())
    }
}
