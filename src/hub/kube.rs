//! Node conditions in Kubernetes, as node-problem-detector publishes them (contract section 9):
//! a strategic-merge PATCH of `/api/v1/nodes/<name>/status` carrying the hub's own condition
//! type, [`CONDITION_TYPE`], through kube's client with k3s's admin kubeconfig.
//!
//! Invariants:
//! - `Unknown` until the node's first report and whenever it is stale: never a healthy
//!   condition without a fresh report behind it.
//! - `lastTransitionTime` changes only when the status does (read back from the Node after a
//!   restart of the hub, so that a restart is not a transition); `lastHeartbeatTime` at every
//!   patch.
//! - Patched when the condition changes, and re-synced every `condition_resync_secs` (300, as
//!   node-problem-detector) when it does not; a failed patch is tried again at the next loop
//!   (one interval later, 10 s by default, npd's retry).
//! - The hub owns the condition types starting with [`OWNED_PREFIX`] and no other: it never
//!   touches `Ready` or another owner's conditions, and removes its own types that it no longer
//!   publishes (`$patch: delete`).
//! - The client is made only on servers, when the loop first needs it (the kube client is the
//!   heaviest part of k3node), and made again after an error.
//! - Only the hub holding the `kube-system/k3node-hub` Lease patches (see [`super::lease`]), so
//!   that servers whose views differ never flap a condition between them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::lease::{Elector, KubeLease};
use super::{now_ms, Hub};
use crate::protocol::health::{NodeHealth, NodeState};

/// The condition the hub publishes.
pub const CONDITION_TYPE: &str = "K3nodeHealthy";
/// Condition types starting with this are the hub's: those it does not publish are removed.
pub const OWNED_PREFIX: &str = "K3node";
/// Longest message written into a condition.
const MESSAGE_LIMIT: usize = 1024;

/// The condition a node should have now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// From the node's entry in the fleet view (None: never reported).
pub fn desired(node: Option<&NodeHealth>) -> Desired {
    let Some(node) = node else {
        return Desired {
            status: "Unknown",
            reason: "NoReport",
            message: "k3node has not received a report from this node yet".into(),
        };
    };
    let problems = |node: &NodeHealth| {
        let mut text = node
            .problems
            .iter()
            .map(|p| format!("{} {}: {}", p.state.as_str(), p.name, p.reason))
            .collect::<Vec<_>>()
            .join("; ");
        if text.len() > MESSAGE_LIMIT {
            let mut cut = MESSAGE_LIMIT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        text
    };
    match node.state {
        NodeState::Stale if node.last_report_age_secs.is_none() => Desired {
            status: "Unknown",
            reason: "NoReport",
            message: "k3node has not received a report from this node yet".into(),
        },
        NodeState::Stale => Desired { status: "Unknown", reason: "ReportStale", message: problems(node) },
        NodeState::Ok => Desired { status: "True", reason: "ChecksPass", message: "every k3node check passes".into() },
        NodeState::Warn => Desired { status: "True", reason: "ChecksWarn", message: problems(node) },
        NodeState::Fail => Desired { status: "False", reason: "ChecksFail", message: problems(node) },
    }
}

/// The strategic-merge patch: our condition, and a delete for each owned type we no longer publish.
pub fn patch_body(desired: &Desired, transition: &str, heartbeat: &str, remove: &[String]) -> serde_json::Value {
    let mut conditions = vec![serde_json::json!({
        "type": CONDITION_TYPE,
        "status": desired.status,
        "reason": desired.reason,
        "message": desired.message,
        "lastHeartbeatTime": heartbeat,
        "lastTransitionTime": transition,
    })];
    conditions.extend(remove.iter().map(|t| serde_json::json!({"type": t, "$patch": "delete"})));
    serde_json::json!({"status": {"conditions": conditions}})
}

/// RFC 3339 in seconds, as Kubernetes writes times.
pub fn k8s_time(unix_ms: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z")).unwrap_or_default()
}

/// What was last published on one Node.
#[derive(Debug, Clone)]
struct Published {
    desired: Desired,
    transition: String,
    at: Instant,
}

/// The loop: every interval, every Node the API lists gets its condition.
pub async fn run(hub: Arc<Hub>) {
    let Some(kubeconfig) = hub.settings.kubeconfig.clone() else { return };
    let interval = Duration::from_secs(hub.settings.tuning.interval_secs.max(1));
    let resync = Duration::from_secs(hub.settings.tuning.condition_resync_secs.max(1));
    let relist = resync.min(interval * 6);
    let mut client: Option<kube::Client> = None;
    let mut published: HashMap<String, Published> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    let mut listed: Option<Instant> = None;
    // The holder renews at every round: three rounds without it and another hub takes over.
    let mut elector = Elector::new(&hub.settings.node, interval * 3);
    loop {
        tokio::time::sleep(interval).await;
        if client.is_none() {
            match connect(&kubeconfig).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    tracing::warn!("hub: cannot reach the Kubernetes API with {kubeconfig}: {e}; trying again");
                    continue;
                }
            }
        }
        let client_now = client.clone().expect("made above");
        if !elector.lead(&KubeLease::new(client_now.clone()), Instant::now(), now_ms()).await {
            // Another server's hub publishes. Should this one lead later, it reads the Nodes
            // afresh rather than trust what it published before.
            published.clear();
            continue;
        }
        let api: Api<Node> = Api::all(client_now);
        if listed.is_none_or(|t| t.elapsed() >= relist) {
            match api.list_metadata(&ListParams::default()).await {
                Ok(list) => {
                    names = list.items.into_iter().filter_map(|n| n.metadata.name).collect();
                    listed = Some(Instant::now());
                    published.retain(|n, _| names.contains(n));
                }
                Err(e) => {
                    tracing::warn!("hub: listing Nodes failed: {e}");
                    client = None;
                    continue;
                }
            }
        }
        let hub2 = hub.clone();
        let Ok(Ok((view, _))) = tokio::task::spawn_blocking(move || hub2.view(now_ms())).await else { continue };
        for name in &names {
            let want =
                desired(view.nodes.iter().find(|n| &n.node == name).filter(|n| n.last_report_age_secs.is_some()));
            if let Err(e) = publish(&api, name, want, &mut published, resync).await {
                tracing::warn!("hub: the {CONDITION_TYPE} condition of Node {name} could not be patched: {e}");
                published.remove(name);
            }
        }
    }
}

async fn connect(path: &str) -> Result<kube::Client, String> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

async fn publish(
    api: &Api<Node>,
    name: &str,
    want: Desired,
    published: &mut HashMap<String, Published>,
    resync: Duration,
) -> Result<(), kube::Error> {
    let (transition, remove) = match published.get(name) {
        Some(p) if p.desired == want && p.at.elapsed() < resync => return Ok(()),
        Some(p) if p.desired.status == want.status => (p.transition.clone(), Vec::new()),
        Some(_) => (k8s_time(now_ms()), Vec::new()),
        None => {
            // First time since the hub started: what is on the Node now.
            let node = api.get_status(name).await?;
            let conditions = node.status.and_then(|s| s.conditions).unwrap_or_default();
            let ours = conditions.iter().find(|c| c.type_ == CONDITION_TYPE);
            let transition = match ours {
                Some(c) if c.status == want.status => c
                    .last_transition_time
                    .as_ref()
                    .map(|t| k8s_time(t.0.timestamp_millis()))
                    .unwrap_or_else(|| k8s_time(now_ms())),
                _ => k8s_time(now_ms()),
            };
            let remove = conditions
                .iter()
                .map(|c| c.type_.clone())
                .filter(|t| t.starts_with(OWNED_PREFIX) && t != CONDITION_TYPE)
                .collect();
            (transition, remove)
        }
    };
    let body = patch_body(&want, &transition, &k8s_time(now_ms()), &remove);
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&body)).await?;
    published.insert(name.to_string(), Published { desired: want, transition, at: Instant::now() });
    Ok(())
}

#[cfg(test)]
mod tests;
