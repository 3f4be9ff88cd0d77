//! The fleet stage (only with a `[fleet]` configured): between detection
//! and the emit stage, it has each finding judged by the fleet (its facts
//! shared, its prevalence read, its severity lowered if the configuration
//! says so) and raises the fleet campaigns this agent completes.
//!
//! It never holds a finding back longer than `fleet.timeout`, and never
//! drops one: when the cluster cannot answer, the finding goes on saying so
//! (see `fleet::prevalence`). Everything else passes through unchanged.

use std::time::Duration;

use crate::{
    channel::{Receiver, Sender},
    event::Timestamp,
    fleet::prevalence::Fleet,
    output::{ocsf, spool::Class},
};

use super::{emit_stage::Emission, every};

/// How often this host says it is in the fleet, findings or not.
const PRESENCE_EVERY: Duration = Duration::from_secs(600);

/// The stage's state.
pub struct FleetStage {
    /// This agent's view of the fleet.
    pub fleet: Fleet,
    /// Where findings and campaigns go on to.
    pub emit: Sender<Emission>,
    /// This host, for campaign records.
    pub host: ocsf::Host,
}

impl FleetStage {
    /// Runs until its input ends (detection finished).
    pub async fn run(mut self, mut input: Receiver<Emission>) {
        self.fleet.announce(Timestamp::now()).await;
        let mut presence = every(PRESENCE_EVERY);
        loop {
            tokio::select! {
                emission = input.recv() => {
                    let Some(emission) = emission else { break };
                    if self.pass(emission).await.is_err() {
                        break;
                    }
                }
                _ = presence.tick() => self.fleet.announce(Timestamp::now()).await,
            }
        }
        let s = &self.fleet.stats;
        tracing::info!(
            judged = s.judged,
            unavailable = s.unavailable,
            campaigns = s.campaigns,
            bad_entries = s.bad_entries,
            "fleet stage done"
        );
    }

    async fn pass(&mut self, emission: Emission) -> Result<(), crate::channel::Closed> {
        match emission {
            Emission::Finding {
                mut finding,
                window,
            } => {
                let campaign = self.fleet.judge(&mut finding).await;
                self.emit
                    .send(Emission::Finding { finding, window })
                    .await?;
                if let Some(campaign) = campaign {
                    tracing::warn!("{}", campaign.summary());
                    self.emit
                        .send(Emission::Record {
                            class: Class::Findings,
                            record: ocsf::campaign_finding(&campaign, &self.host),
                        })
                        .await?;
                }
                Ok(())
            }
            other => self.emit.send(other).await,
        }
    }
}
