//! The deployment registry: the state of every deployment the relay knows,
//! fed by REST (CI systems, scripts) and by agents (`o1-agent deploy`).
//!
//! Pure state machine: methods take `now` and return what changed, the hub
//! turns that into messages for subscribers.

use std::collections::{HashMap, VecDeque};

use o1_common::Level;
use o1_common::Timestamp;
use o1_common::api::DeploymentStatus;
use o1_common::rest::DeploymentView;

/// One deployment's state.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub deployment_id: String,
    pub application: String,
    pub hosts: Vec<String>,
    pub status: DeploymentStatus,
    pub progress: u8,
    pub message: String,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub logs: VecDeque<DeploymentLog>,
    /// Bytes of the kept lines' messages (bounded by `max_log_bytes`).
    pub log_bytes: usize,
    /// The history offset of the last change (0 before any).
    pub offset: u64,
    /// The offset of the newest line no longer kept, if any was dropped.
    pub evicted_through: Option<u64>,
}

impl Deployment {
    /// The REST view (everything but the kept lines).
    pub fn view(&self) -> DeploymentView {
        DeploymentView {
            deployment_id: self.deployment_id.clone(),
            application: self.application.clone(),
            hosts: self.hosts.clone(),
            status: self.status,
            progress: self.progress,
            message: self.message.clone(),
            started_at: self.started_at,
            updated_at: self.updated_at,
            ended_at: self.ended_at,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeploymentLog {
    pub host: String,
    pub level: Level,
    pub message: String,
    pub timestamp: Timestamp,
    /// Its history offset.
    pub offset: u64,
    /// The `log` message as subscribers receive it (without their
    /// `subscriptionId`), serialized once and shared by every replay.
    pub body: bytes::Bytes,
}

/// A change requested by REST or an agent.
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub status: Option<DeploymentStatus>,
    pub progress: Option<i64>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeploymentError {
    #[error("Deployment not found")]
    NotFound,
    #[error("deployment `{0}` already exists")]
    AlreadyExists(String),
    #[error("deployment id `{0}` is invalid: {rule}", rule = o1_common::deployment::ID_RULE)]
    InvalidId(String),
    #[error("progress {0} is outside 0-100")]
    ProgressOutOfRange(i64),
    #[error("deployment has ended ({0:?}); no further updates are accepted")]
    AlreadyEnded(DeploymentStatus),
    #[error("a deployment cannot go back to `pending`")]
    BackToPending,
    #[error(
        "too many deployments in progress: at most {0} pending or running at once; finish or cancel some"
    )]
    TooManyActive(usize),
    #[error("field `{0}` is too long: at most {1} characters")]
    TooLong(&'static str, usize),
    #[error("the relay cannot record this change: {0}")]
    Storage(String),
    #[error("host name {0:?} must not be empty or hold control characters")]
    InvalidHost(String),
    #[error("this credential does not cover every host of deployment `{0}`")]
    Forbidden(String),
}

/// Longest application or host name of a deployment.
pub const MAX_NAME_CHARS: usize = 256;
/// Longest host name (DNS) a deployment names.
pub const MAX_HOST_CHARS: usize = 253;
/// Most hosts a deployment names.
pub const MAX_HOSTS: usize = 100;

/// Limits of the registry: `[deployments]` in the configuration.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryLimits {
    /// Finished deployments kept for late subscribers; the oldest go first.
    pub max_finished: usize,
    /// Log lines kept per deployment for replay.
    pub max_log_lines: usize,
    /// Bytes of log lines kept per deployment; the oldest go first.
    pub max_log_bytes: usize,
    /// Deployments pending or running at once; more are refused (429).
    pub max_active: usize,
    /// Seconds without an event after which a pending or running
    /// deployment ends as `failed` (timed out).
    pub active_ttl_secs: u64,
    /// Longest status message kept; longer ones are cut.
    pub max_message_bytes: usize,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        RegistryLimits {
            max_finished: 1000,
            max_log_lines: 1000,
            max_log_bytes: 256 * 1024,
            max_active: 1_000,
            active_ttl_secs: 3600,
            max_message_bytes: 4096,
        }
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    deployments: HashMap<String, Deployment>,
    finished: VecDeque<String>,
    limits: RegistryLimits,
    /// Disambiguates generated ids created in the same second.
    last_generated: Option<(String, u32)>,
}

/// What an update changed, for the hub to publish.
#[derive(Debug, Clone)]
pub struct Changed {
    pub deployment: Deployment,
    /// The deployment reached a final status with this update.
    pub ended: bool,
}

pub use o1_common::deployment::valid_id;

impl Registry {
    pub fn new(limits: RegistryLimits) -> Self {
        Registry {
            limits,
            ..Registry::default()
        }
    }

    pub fn get(&self, id: &str) -> Option<&Deployment> {
        self.deployments.get(id)
    }

    /// Newest first.
    pub fn list(&self) -> Vec<&Deployment> {
        let mut all: Vec<&Deployment> = self.deployments.values().collect();
        all.sort_by(|a, b| {
            b.started_at
                .cmp(&a.started_at)
                .then(b.deployment_id.cmp(&a.deployment_id))
        });
        all
    }

    /// A new id of the form `deploy-YYYYMMDD-HHMMSS`, with `-2`, `-3`...
    /// when several are made in the same second.
    pub fn generate_id(&mut self, now: Timestamp) -> String {
        let base = o1_common::deployment::base_id(now);
        let mut n = match &self.last_generated {
            Some((last, n)) if *last == base => n + 1,
            _ => 1,
        };
        loop {
            let id = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            if !self.deployments.contains_key(&id) {
                self.last_generated = Some((base, n));
                return id;
            }
            n += 1;
        }
    }

    pub fn create(
        &mut self,
        id: Option<String>,
        application: String,
        hosts: Vec<String>,
        message: Option<String>,
        now: Timestamp,
    ) -> Result<Deployment, DeploymentError> {
        if application.chars().count() > MAX_NAME_CHARS {
            return Err(DeploymentError::TooLong("application", MAX_NAME_CHARS));
        }
        if hosts.len() > MAX_HOSTS {
            return Err(DeploymentError::TooLong("hosts", MAX_HOSTS));
        }
        if hosts.iter().any(|h| h.chars().count() > MAX_HOST_CHARS) {
            return Err(DeploymentError::TooLong("hosts[]", MAX_HOST_CHARS));
        }
        if let Some(bad) = hosts
            .iter()
            .find(|h| h.is_empty() || h.chars().any(char::is_control))
        {
            return Err(DeploymentError::InvalidHost(bad.clone()));
        }
        if self.active() >= self.limits.max_active {
            return Err(DeploymentError::TooManyActive(self.limits.max_active));
        }
        let message = message.map(|m| o1_common::text::cut(m, self.limits.max_message_bytes));
        let id = match id {
            Some(id) if !valid_id(&id) => return Err(DeploymentError::InvalidId(id)),
            Some(id) if self.deployments.contains_key(&id) => {
                return Err(DeploymentError::AlreadyExists(id));
            }
            Some(id) => id,
            None => self.generate_id(now),
        };
        let deployment = Deployment {
            deployment_id: id.clone(),
            application,
            hosts,
            status: DeploymentStatus::Pending,
            progress: 0,
            message: message.unwrap_or_else(|| "Deployment created".into()),
            started_at: now,
            updated_at: now,
            ended_at: None,
            logs: VecDeque::new(),
            log_bytes: 0,
            offset: 0,
            evicted_through: None,
        };
        self.deployments.insert(id, deployment.clone());
        Ok(deployment)
    }

    /// Applies an update; an agent's first event for an unknown id creates
    /// the deployment (`create_for` = Some(application, host)).
    pub fn update(
        &mut self,
        id: &str,
        update: Update,
        create_for: Option<(&str, &str)>,
        now: Timestamp,
    ) -> Result<Changed, DeploymentError> {
        if let Some(progress) = update.progress
            && !(0..=100).contains(&progress)
        {
            return Err(DeploymentError::ProgressOutOfRange(progress));
        }
        if !self.deployments.contains_key(id) {
            match create_for {
                Some((application, host)) if valid_id(id) => {
                    self.create(
                        Some(id.to_owned()),
                        application.to_owned(),
                        vec![host.to_owned()],
                        None,
                        now,
                    )?;
                }
                Some(_) => return Err(DeploymentError::InvalidId(id.to_owned())),
                None => return Err(DeploymentError::NotFound),
            }
        }
        let deployment = self
            .deployments
            .get_mut(id)
            .ok_or(DeploymentError::NotFound)?;
        if deployment.status.is_final() {
            return Err(DeploymentError::AlreadyEnded(deployment.status));
        }
        if update.status == Some(DeploymentStatus::Pending)
            && deployment.status != DeploymentStatus::Pending
        {
            return Err(DeploymentError::BackToPending);
        }
        if let Some((_, host)) = create_for
            && !deployment.hosts.iter().any(|h| h == host)
        {
            deployment.hosts.push(host.to_owned());
        }
        let mut status = update.status.unwrap_or(deployment.status);
        if status == DeploymentStatus::Pending && update.progress.is_some_and(|p| p > 0) {
            status = DeploymentStatus::Running;
        }
        deployment.status = status;
        if let Some(progress) = update.progress {
            deployment.progress = progress as u8;
        }
        if status == DeploymentStatus::Completed {
            deployment.progress = 100;
        }
        if let Some(message) = update.message {
            deployment.message = o1_common::text::cut(message, self.limits.max_message_bytes);
        }
        deployment.updated_at = now;
        let ended = status.is_final();
        if ended {
            deployment.ended_at = Some(now);
        }
        let changed = Changed {
            deployment: deployment.clone(),
            ended,
        };
        if ended {
            self.finished.push_back(id.to_owned());
            while self.finished.len() > self.limits.max_finished {
                if let Some(old) = self.finished.pop_front() {
                    self.deployments.remove(&old);
                }
            }
        }
        Ok(changed)
    }

    /// Whether `update` of `id` would be accepted now (without applying it).
    pub fn check_update(&self, id: &str, update: &Update) -> Result<(), DeploymentError> {
        if let Some(progress) = update.progress
            && !(0..=100).contains(&progress)
        {
            return Err(DeploymentError::ProgressOutOfRange(progress));
        }
        let deployment = self.deployments.get(id).ok_or(DeploymentError::NotFound)?;
        if deployment.status.is_final() {
            return Err(DeploymentError::AlreadyEnded(deployment.status));
        }
        if update.status == Some(DeploymentStatus::Pending)
            && deployment.status != DeploymentStatus::Pending
        {
            return Err(DeploymentError::BackToPending);
        }
        Ok(())
    }

    /// Deployments pending or running now.
    pub fn active(&self) -> usize {
        self.deployments.len().saturating_sub(self.finished.len())
    }

    /// Ends as `failed` every pending or running deployment with no event
    /// within the TTL; returns what changed, for the hub to announce.
    /// Records that the last change of `id` has history offset `offset`.
    pub fn stamp(&mut self, id: &str, offset: u64) {
        if let Some(deployment) = self.deployments.get_mut(id) {
            deployment.offset = offset;
        }
    }

    /// Puts back a deployment as another relay recorded it (`view`, at
    /// `offset`), unless a newer one is held.
    pub fn restore(&mut self, view: DeploymentView, offset: u64) {
        if self
            .deployments
            .get(&view.deployment_id)
            .is_some_and(|d| d.offset >= offset)
        {
            return;
        }
        let id = view.deployment_id.clone();
        let ended = view.status.is_final();
        let deployment = Deployment {
            deployment_id: view.deployment_id,
            application: view.application,
            hosts: view.hosts,
            status: view.status,
            progress: view.progress,
            message: view.message,
            started_at: view.started_at,
            updated_at: view.updated_at,
            ended_at: view.ended_at,
            logs: VecDeque::new(),
            log_bytes: 0,
            offset,
            evicted_through: None,
        };
        if self.deployments.insert(id.clone(), deployment).is_none() && ended {
            self.finished.push_back(id);
            while self.finished.len() > self.limits.max_finished {
                if let Some(old) = self.finished.pop_front() {
                    self.deployments.remove(&old);
                }
            }
        }
    }

    /// Forgets a deployment (its creation could not be recorded).
    pub fn remove(&mut self, id: &str) {
        self.deployments.remove(id);
    }

    /// Deployments in progress silent for `active_ttl_secs`.
    pub fn stale(&self, now: Timestamp) -> Vec<String> {
        let ttl_ms = (self.limits.active_ttl_secs as i64).saturating_mul(1000);
        self.deployments
            .values()
            .filter(|d| {
                !d.status.is_final() && now.unix_millis - d.updated_at.unix_millis >= ttl_ms
            })
            .map(|d| d.deployment_id.clone())
            .collect()
    }

    /// The status message of a deployment that timed out.
    pub fn timeout_message(&self) -> String {
        format!(
            "Deployment timed out: no event for {} s",
            self.limits.active_ttl_secs
        )
    }

    pub fn expire(&mut self, now: Timestamp) -> Vec<Changed> {
        let ttl_ms = (self.limits.active_ttl_secs as i64).saturating_mul(1000);
        let stale: Vec<String> = self
            .deployments
            .values()
            .filter(|d| {
                !d.status.is_final() && now.unix_millis - d.updated_at.unix_millis >= ttl_ms
            })
            .map(|d| d.deployment_id.clone())
            .collect();
        let message = format!(
            "Deployment timed out: no event for {} s",
            self.limits.active_ttl_secs
        );
        stale
            .into_iter()
            .filter_map(|id| {
                let update = Update {
                    status: Some(DeploymentStatus::Failed),
                    progress: None,
                    message: Some(message.clone()),
                };
                self.update(&id, update, None, now).ok()
            })
            .collect()
    }

    /// One page of the list, newest first: up to `limit` deployments after
    /// the one with id `before` (from the start when `None`), and whether
    /// more follow.
    /// One page of the deployments `visible` lets through, newest first.
    pub fn page(
        &self,
        before: Option<&str>,
        limit: usize,
        visible: impl Fn(&Deployment) -> bool,
    ) -> (Vec<DeploymentView>, bool) {
        let all: Vec<&Deployment> = self.list().into_iter().filter(|d| visible(d)).collect();
        let start = match before {
            Some(id) => all
                .iter()
                .position(|d| d.deployment_id == id)
                .map_or(all.len(), |i| i + 1),
            None => 0,
        };
        let page: Vec<DeploymentView> = all
            .iter()
            .skip(start)
            .take(limit)
            .map(|d| d.view())
            .collect();
        let more = start + page.len() < all.len();
        (page, more)
    }

    /// Records a log line of a deployment (kept for replay).
    pub fn add_log(&mut self, id: &str, log: DeploymentLog) -> Result<(), DeploymentError> {
        let deployment = self
            .deployments
            .get_mut(id)
            .ok_or(DeploymentError::NotFound)?;
        deployment.log_bytes += log.body.len();
        deployment.logs.push_back(log);
        while deployment.logs.len() > self.limits.max_log_lines
            || (deployment.log_bytes > self.limits.max_log_bytes && deployment.logs.len() > 1)
        {
            if let Some(old) = deployment.logs.pop_front() {
                deployment.evicted_through = Some(old.offset);
                deployment.log_bytes -= old.body.len();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    #[test]
    fn generated_ids_follow_the_seed_form_and_stay_unique() {
        let mut registry = Registry::default();
        let now = at("2024-01-15T10:30:00Z");
        let a = registry
            .create(None, "app".into(), vec![], None, now)
            .unwrap();
        let b = registry
            .create(None, "app".into(), vec![], None, now)
            .unwrap();
        assert_eq!(a.deployment_id, "deploy-20240115-103000");
        assert_eq!(b.deployment_id, "deploy-20240115-103000-2");
    }

    #[test]
    fn transitions_table() {
        use DeploymentStatus::*;
        let now = at("2024-01-15T10:30:00Z");
        let update = |status: Option<DeploymentStatus>, progress: Option<i64>| Update {
            status,
            progress,
            message: None,
        };
        // (steps before, the update, expected)
        let table: Vec<(
            Vec<Update>,
            Update,
            Result<DeploymentStatus, DeploymentError>,
        )> = vec![
            (vec![], update(Some(Running), Some(10)), Ok(Running)),
            (vec![], update(None, Some(45)), Ok(Running)),
            (
                vec![],
                update(None, Some(101)),
                Err(DeploymentError::ProgressOutOfRange(101)),
            ),
            (
                vec![],
                update(None, Some(-1)),
                Err(DeploymentError::ProgressOutOfRange(-1)),
            ),
            (
                vec![update(Some(Completed), None)],
                update(None, Some(50)),
                Err(DeploymentError::AlreadyEnded(Completed)),
            ),
            (
                vec![update(Some(Failed), None)],
                update(Some(Running), None),
                Err(DeploymentError::AlreadyEnded(Failed)),
            ),
            (
                vec![update(Some(Running), None)],
                update(Some(Pending), None),
                Err(DeploymentError::BackToPending),
            ),
            (
                vec![update(Some(Running), None)],
                update(Some(Cancelled), None),
                Ok(Cancelled),
            ),
        ];
        for (i, (before, next, expected)) in table.into_iter().enumerate() {
            let mut registry = Registry::default();
            registry
                .create(Some("d".into()), "app".into(), vec![], None, now)
                .unwrap();
            for step in before {
                registry.update("d", step, None, now).unwrap();
            }
            let got = registry
                .update("d", next, None, now)
                .map(|c| c.deployment.status);
            assert_eq!(got, expected, "row {i}");
        }
    }

    #[test]
    fn active_deployments_are_capped_and_silent_ones_expire() {
        let mut registry = Registry::new(RegistryLimits {
            max_active: 2,
            active_ttl_secs: 60,
            ..RegistryLimits::default()
        });
        let t0 = at("2024-01-15T10:30:00Z");
        for id in ["a", "b"] {
            registry
                .create(Some(id.into()), "web".into(), vec![], None, t0)
                .unwrap();
        }
        assert!(matches!(
            registry.create(Some("c".into()), "web".into(), vec![], None, t0),
            Err(DeploymentError::TooManyActive(2))
        ));
        registry
            .update(
                "b",
                Update {
                    progress: Some(10),
                    ..Update::default()
                },
                None,
                at("2024-01-15T10:30:30Z"),
            )
            .unwrap();
        let expired = registry.expire(at("2024-01-15T10:31:00Z"));
        assert_eq!(expired.len(), 1, "only the one silent for the TTL");
        assert_eq!(expired[0].deployment.deployment_id, "a");
        assert_eq!(expired[0].deployment.status, DeploymentStatus::Failed);
        assert!(expired[0].ended);
        assert_eq!(registry.active(), 1);
        registry
            .create(Some("c".into()), "web".into(), vec![], None, t0)
            .unwrap();
        let long = "x".repeat(300);
        assert!(matches!(
            registry.create(None, long, vec![], None, t0),
            Err(DeploymentError::TooLong("application", _))
        ));
    }

    #[test]
    fn a_deployments_lines_are_bounded_in_bytes() {
        let mut registry = Registry::new(RegistryLimits {
            max_log_bytes: 3000,
            ..RegistryLimits::default()
        });
        let t0 = at("2024-01-15T10:30:00Z");
        registry
            .create(Some("d".into()), "web".into(), vec![], None, t0)
            .unwrap();
        for n in 0..10 {
            let log = DeploymentLog {
                host: "h".into(),
                level: Level::Info,
                message: format!("{n}"),
                timestamp: t0,
                offset: n,
                body: bytes::Bytes::from(vec![b'x'; 1000]),
            };
            registry.add_log("d", log).unwrap();
        }
        let kept = &registry.get("d").unwrap().logs;
        assert_eq!(kept.len(), 3, "3 lines of 1,000 bytes fit in 3,000");
        assert_eq!(kept[0].message, "7", "the oldest went first");
        assert_eq!(registry.get("d").unwrap().evicted_through, Some(6));
    }

    #[test]
    fn pages_cover_the_list_once_newest_first() {
        let mut registry = Registry::default();
        for (i, time) in ["10:30:01", "10:30:02", "10:30:03", "10:30:04", "10:30:05"]
            .iter()
            .enumerate()
        {
            registry
                .create(
                    Some(format!("d{i}")),
                    "web".into(),
                    vec![],
                    None,
                    at(&format!("2024-01-15T{time}Z")),
                )
                .unwrap();
        }
        let ids = |page: &[DeploymentView]| {
            page.iter()
                .map(|d| d.deployment_id.clone())
                .collect::<Vec<_>>()
        };
        let (first, more) = registry.page(None, 2, |_| true);
        assert_eq!(
            (ids(&first), more),
            (vec!["d4".to_owned(), "d3".into()], true)
        );
        let (second, more) = registry.page(Some("d3"), 2, |_| true);
        assert_eq!(
            (ids(&second), more),
            (vec!["d2".to_owned(), "d1".into()], true)
        );
        let (last, more) = registry.page(Some("d1"), 2, |_| true);
        assert_eq!((ids(&last), more), (vec!["d0".to_owned()], false));
        assert!(
            registry.page(Some("gone"), 2, |_| true).0.is_empty(),
            "an unknown cursor is past the end"
        );
        // Pages count only what the caller may see.
        let (visible, more) = registry.page(None, 2, |d| d.deployment_id != "d4");
        assert_eq!(
            (ids(&visible), more),
            (vec!["d3".to_owned(), "d2".into()], true)
        );
    }

    #[test]
    fn finished_deployments_are_bounded() {
        let mut registry = Registry::new(RegistryLimits {
            max_finished: 2,
            max_log_lines: 1,
            ..RegistryLimits::default()
        });
        let now = at("2024-01-15T10:30:00Z");
        for i in 0..3 {
            let id = format!("d{i}");
            registry
                .create(Some(id.clone()), "a".into(), vec![], None, now)
                .unwrap();
            let done = Update {
                status: Some(DeploymentStatus::Completed),
                ..Update::default()
            };
            registry.update(&id, done, None, now).unwrap();
        }
        assert!(registry.get("d0").is_none());
        assert!(registry.get("d2").is_some());
        let unknown = registry.update("nope", Update::default(), None, now);
        assert_eq!(unknown.err(), Some(DeploymentError::NotFound));
    }
}
