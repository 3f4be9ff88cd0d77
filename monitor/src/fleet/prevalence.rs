//! Fleet prevalence through a JetStream key-value bucket: each agent shares
//! the facts of its findings and reads how many hosts saw the same ones.
//!
//! The bucket (`fleet.bucket`, kept for the prevalence window plus an hour)
//! holds three kinds of keys, all short and free of host data:
//!
//! - `fact.<fact id>.<host id>`: one host's [`Sighting`] of one fact;
//! - `host.<host id>`: a host's [`Presence`], refreshed with each finding
//!   and every ten minutes, so "of M hosts" counts the fleet;
//! - `campaign.<fact id>`: the claim of the one agent that raised the
//!   campaign on that fact, created only if absent, so the fleet raises
//!   each campaign once.
//!
//! A host id is the first 64 bits of the SHA-256 of the host's name (names
//! may hold characters a key cannot). The cluster being slow or down never
//! holds a finding back for more than `fleet.timeout`, and never hides one:
//! the finding goes on saying the fleet could not be asked, and the fleet
//! is not asked again for 30 seconds.

use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, ReplayPolicy, push::OrderedConfig},
    kv,
};
use futures_util::StreamExt as _;
use serde::{Serialize, de::DeserializeOwned};

use super::{
    connection::Endpoint,
    facts::{self, Campaign, Fact, FactNamer, FleetContext, Judgement, Presence, Sighting},
};
use crate::{event::Timestamp, model::finding::Finding};

/// How long the fleet is not asked after it failed to answer.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Most entries read for one key pattern: a bucket flooded by a hostile
/// client costs bounded memory and time (and the count is then a floor).
const MAX_ENTRIES: usize = 100_000;
/// Reads of a fact's sightings until one holds this host's own write
/// (waits of 20, 40, 80 and 160 ms between them).
const READ_TRIES: usize = 5;
/// A host's presence is refreshed at least this often (stream time).
const PRESENCE_EVERY: Duration = Duration::from_secs(600);

/// How an agent takes part in fleet prevalence.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// The key-value bucket.
    pub bucket: String,
    /// Its replicas, when this agent creates it.
    pub replicas: usize,
    /// Share the program and the value with each fact (off: only ids).
    pub share_details: bool,
    /// Longest wait for the fleet's answer on one finding.
    pub timeout: Duration,
    /// Prevalence window, campaign rule, priority lowering.
    pub judgement: Judgement,
    /// Names facts.
    pub namer: FactNamer,
}

/// What the fleet stage has done, for the status and the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetStats {
    /// Findings the fleet judged.
    pub judged: u64,
    /// Findings it could not judge (cluster down or slow).
    pub unavailable: u64,
    /// Campaigns this agent raised.
    pub campaigns: u64,
    /// Entries in the bucket that were not what an agent writes.
    pub bad_entries: u64,
}

/// One agent's view of the fleet.
pub struct Fleet {
    endpoint: Endpoint,
    settings: FleetSettings,
    host: String,
    host_id: String,
    client: Option<async_nats::Client>,
    store: Option<kv::Store>,
    down: Option<(Instant, String)>,
    presence_at: Option<Timestamp>,
    /// What it has done.
    pub stats: FleetStats,
}

/// A host's id in keys.
fn host_id(host: &str) -> String {
    crate::hash::sha256_hex(host.as_bytes())[..16].to_owned()
}

impl Fleet {
    /// The view of `host`; nothing is connected until the first finding.
    pub fn new(endpoint: Endpoint, settings: FleetSettings, host: &str) -> Self {
        Self {
            endpoint,
            settings,
            host: host.to_owned(),
            host_id: host_id(host),
            client: None,
            store: None,
            down: None,
            presence_at: None,
            stats: FleetStats::default(),
        }
    }

    /// Says this host is in the fleet, at `at` (start, and every ten
    /// minutes while findings are rare). Failures are logged, not fatal.
    pub async fn announce(&mut self, at: Timestamp) {
        let timeout = self.settings.timeout;
        let result = tokio::time::timeout(timeout, async {
            let store = self.store().await?;
            self.put_presence(&store, at).await
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(why)) => tracing::warn!("fleet: cannot announce this host: {why}"),
            Err(_) => tracing::warn!(
                "fleet: cannot announce this host: no answer within {}",
                humantime::format_duration(timeout)
            ),
        }
    }

    /// Whether the presence is due a refresh at `at`.
    pub fn presence_due(&self, at: Timestamp) -> bool {
        self.presence_at
            .is_none_or(|last| last.plus(PRESENCE_EVERY) <= at)
    }

    /// Shares `finding`'s facts and sets what the fleet says of it
    /// (`finding.fleet`), lowering its severity when the configuration says
    /// so. Returns the campaign it completes, if this agent is the one to
    /// raise it. Never fails: when the fleet cannot answer, the finding
    /// says so.
    pub async fn judge(&mut self, finding: &mut Finding) -> Option<Campaign> {
        let window = self.settings.judgement.window;
        if let Some((until, why)) = &self.down
            && Instant::now() < *until
        {
            self.stats.unavailable += 1;
            finding.fleet = Some(facts::unavailable(why.clone(), window));
            return None;
        }
        let facts = facts::facts_of(finding, &self.settings.namer);
        let timeout = self.settings.timeout;
        let asked = tokio::time::timeout(timeout, self.ask(finding, &facts)).await;
        let why = match asked {
            Ok(Ok((context, campaign))) => {
                self.down = None;
                self.stats.judged += 1;
                if let Some(before) = context.lowered_from {
                    finding.guidance.severity = facts::lowered(before);
                }
                finding.summary = format!("{}; fleet: {}", finding.summary, context.text);
                finding.fleet = Some(context);
                return campaign.map(|mut c| {
                    c.finding = finding.id.clone();
                    self.stats.campaigns += 1;
                    c
                });
            }
            Ok(Err(why)) => why,
            Err(_) => format!(
                "the cluster did not answer within {}",
                humantime::format_duration(timeout)
            ),
        };
        tracing::warn!(
            "fleet: {why}; findings go out without fleet prevalence for {}s",
            RETRY_AFTER.as_secs()
        );
        // A connection that failed is made again next time.
        self.store = None;
        self.down = Some((Instant::now() + RETRY_AFTER, why.clone()));
        self.stats.unavailable += 1;
        finding.fleet = Some(facts::unavailable(why, window));
        None
    }

    /// The bucket, connecting and creating it if needed.
    async fn store(&mut self) -> Result<kv::Store, String> {
        if let Some(store) = &self.store {
            return Ok(store.clone());
        }
        let client = match &self.client {
            Some(c) => c.clone(),
            None => {
                let c = self
                    .endpoint
                    .connect(&format!("monitor fleet {}", self.host))
                    .await?;
                self.client = Some(c.clone());
                c
            }
        };
        let js = jetstream::new(client);
        let bucket = &self.settings.bucket;
        let store = match js.get_key_value(bucket).await {
            Ok(store) => store,
            Err(_) => {
                // The bucket's stream, made as `create_key_value` would make
                // it; that call first asks for the account's details, which
                // servers before 2.10 answer in a shape the client rejects.
                let created = js
                    .create_stream(jetstream::stream::Config {
                        name: format!("KV_{bucket}"),
                        description: Some("monitor: novelty facts shared by the fleet".into()),
                        subjects: vec![format!("$KV.{bucket}.>")],
                        max_messages_per_subject: 1,
                        max_age: self.settings.judgement.window + Duration::from_secs(3600),
                        num_replicas: self.settings.replicas,
                        allow_rollup: true,
                        deny_delete: true,
                        allow_direct: true,
                        discard: jetstream::stream::DiscardPolicy::New,
                        ..Default::default()
                    })
                    .await;
                // Made here or by another agent meanwhile: open it.
                js.get_key_value(bucket).await.map_err(|e| match created {
                    Err(c) => format!("cannot create bucket {bucket:?}: {c}"),
                    Ok(_) => format!("cannot open bucket {bucket:?}: {e}"),
                })?
            }
        };
        self.store = Some(store.clone());
        Ok(store)
    }

    /// Says this host is in the fleet at `at`.
    async fn put_presence(&mut self, store: &kv::Store, at: Timestamp) -> Result<(), String> {
        let presence = Presence {
            host: self.host.clone(),
            last_seen: at,
        };
        put_json(store, &format!("host.{}", self.host_id), &presence).await?;
        self.presence_at = Some(at);
        Ok(())
    }

    /// Shares the facts, reads the fleet's sightings, judges.
    async fn ask(
        &mut self,
        finding: &Finding,
        facts: &[Fact],
    ) -> Result<(FleetContext, Option<Campaign>), String> {
        let at = finding.time;
        let store = self.store().await?;
        if self.presence_due(at) {
            self.put_presence(&store, at).await?;
        }
        let window = self.settings.judgement.window;
        let mut sightings = Vec::with_capacity(facts.len());
        for fact in facts {
            let key = format!("fact.{}.{}", fact.id, self.host_id);
            // This host's earlier sighting keeps its first time while it is
            // within the window.
            let earlier: Option<Sighting> = get_json(&store, &key).await?;
            let first_seen = earlier
                .filter(|s| s.last_seen.plus(window) >= at && s.first_seen <= at)
                .map_or(at, |s| s.first_seen);
            let (program, value) = if self.settings.share_details {
                (Some(fact.program.clone()), Some(fact.value.clone()))
            } else {
                (None, None)
            };
            put_json(
                &store,
                &key,
                &Sighting {
                    host: self.host.clone(),
                    first_seen,
                    last_seen: at,
                    kind: fact.kind.clone(),
                    program,
                    value,
                },
            )
            .await?;
            let seen = self.sightings_since_own(&store, &fact.id, at).await?;
            sightings.push(seen);
        }
        let fleet = self.latest_under(&store, "host.*").await?;
        let verdict = facts::judge(
            facts,
            &sightings,
            &fleet,
            at,
            finding.guidance.severity,
            &self.settings.judgement,
        );
        let mut context = verdict.context;
        let Some(campaign) = verdict.campaign else {
            return Ok((context, None));
        };
        // One agent raises it: the one whose claim is created first. A
        // claim older than the window is of an earlier campaign.
        let claim = format!("campaign.{}", campaign.fact);
        let mut stored = campaign.clone();
        if !self.settings.share_details {
            stored.program.clear();
            stored.value.clear();
        }
        let body = serde_json::to_vec(&stored).map_err(|e| e.to_string())?;
        let created = store.create(&claim, body.clone().into()).await;
        tracing::debug!(
            campaign = %campaign.id,
            hosts = campaign.hosts.len(),
            claimed = created.is_ok(),
            "fleet: a campaign on fact {}",
            campaign.fact
        );
        match created {
            Ok(_) => Ok((context, Some(campaign))),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let entry = store
                    .entry(claim.clone())
                    .await
                    .map_err(|e| format!("cannot read {claim}: {e}"))?;
                let earlier = entry.as_ref().and_then(|e| {
                    serde_json::from_slice::<Campaign>(&e.value)
                        .ok()
                        .map(|c| (c, e.revision))
                });
                match earlier {
                    Some((c, _))
                        if c.hosts
                            .last()
                            .is_some_and(|(_, t)| t.plus(window) >= campaign.hosts[0].1) =>
                    {
                        context.campaign = Some(c.id);
                        Ok((context, None))
                    }
                    Some((_, revision)) => {
                        // Stale: this is a new campaign on an old fact.
                        match store.update(&claim, body.into(), revision).await {
                            Ok(_) => Ok((context, Some(campaign))),
                            Err(_) => Ok((context, None)),
                        }
                    }
                    None => {
                        self.stats.bad_entries += 1;
                        let _ = store.put(&claim, body.into()).await;
                        Ok((context, Some(campaign)))
                    }
                }
            }
            // The claim could not be made: raise it anyway (twice is
            // better than never).
            Err(e) => {
                tracing::warn!("fleet: cannot claim campaign {}: {e}", campaign.id);
                Ok((context, Some(campaign)))
            }
        }
    }

    /// Every host's sighting of fact `id`, read until this host's own, just
    /// written at `at`, is among them. A read is served by whichever of the
    /// bucket's replicas the server places its consumer on, and a replica
    /// may not yet have applied the latest writes; one that has this
    /// host's last write has every write before it. After a few tries the
    /// last read is used: a count short by the latest writes is better than
    /// none.
    async fn sightings_since_own(
        &mut self,
        store: &kv::Store,
        id: &str,
        at: Timestamp,
    ) -> Result<Vec<Sighting>, String> {
        let pattern = format!("fact.{id}.*");
        let mut pause = Duration::from_millis(20);
        for _ in 1..READ_TRIES {
            let seen: Vec<Sighting> = self.latest_under(store, &pattern).await?;
            if seen
                .iter()
                .any(|s| s.host == self.host && s.last_seen == at)
            {
                return Ok(seen);
            }
            tracing::debug!(fact = %id, "fleet: a replica behind the latest writes answered; reading again");
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        self.latest_under(store, &pattern).await
    }

    /// The latest value of every key matching `pattern` (`fact.<id>.*`),
    /// decoded; entries that do not decode are counted and skipped.
    async fn latest_under<T: DeserializeOwned>(
        &mut self,
        store: &kv::Store,
        pattern: &str,
    ) -> Result<Vec<T>, String> {
        let client = self.client.clone().ok_or("not connected")?;
        let consumer = store
            .stream
            .create_consumer(OrderedConfig {
                deliver_subject: client.new_inbox(),
                filter_subject: format!("{}{pattern}", store.prefix),
                deliver_policy: DeliverPolicy::LastPerSubject,
                replay_policy: ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot read {pattern} from bucket {:?}: {e}", store.name))?;
        let mut values = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(values);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| format!("cannot read {pattern}: {e}"))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| format!("cannot read {pattern}: {e}"))?;
            let pending = message.info().map(|i| i.pending).unwrap_or(0);
            match serde_json::from_slice::<T>(&message.payload) {
                Ok(v) => values.push(v),
                Err(_) => self.stats.bad_entries += 1,
            }
            if pending == 0 || values.len() >= MAX_ENTRIES {
                break;
            }
        }
        Ok(values)
    }
}

async fn put_json<T: Serialize>(store: &kv::Store, key: &str, value: &T) -> Result<(), String> {
    let body = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    store
        .put(key, body.into())
        .await
        .map(drop)
        .map_err(|e| format!("cannot write {key} to bucket {:?}: {e}", store.name))
}

async fn get_json<T: DeserializeOwned>(store: &kv::Store, key: &str) -> Result<Option<T>, String> {
    let bytes = store
        .get(key)
        .await
        .map_err(|e| format!("cannot read {key} from bucket {:?}: {e}", store.name))?;
    Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
}
