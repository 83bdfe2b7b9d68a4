//! A coordinator among several on etcd: it serves its ports all along, and
//! runs the fleet task only while the election says it leads. Handlers
//! follow a [`Route`]: the fleet task while leading; otherwise a refusal
//! naming the leader, which agents and the CLI follow.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::EtcdStoreSettings;
use crate::etcd::Etcd;

use super::election::{self, ElectionSettings, Member, Role, Term};
use super::fleet::{Fleet, FleetHandle, FleetSettings};
use super::handle::Route;
use super::store::etcd::{EtcdStore, Fence, Keys};

/// Starts a fleet task for each term and stops it at the term's end.
struct FleetTerm {
    settings: FleetSettings,
    etcd: EtcdStoreSettings,
    fence: Arc<Fence>,
    route: watch::Sender<Route>,
    task: Option<super::fleet::FleetTask>,
}

impl Term for FleetTerm {
    async fn lead(&mut self, epoch: i64) {
        let (etcd, prefix, fence) = (
            self.etcd.etcd.clone(),
            self.etcd.prefix.clone(),
            self.fence.clone(),
        );
        // The store's connect blocks (its own thread answers it).
        let store =
            tokio::task::spawn_blocking(move || EtcdStore::connect(&etcd, &prefix, fence)).await;
        let store = match store {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::error!("cannot open the store to lead: {e}");
                self.fence.hold(0);
                return;
            }
            Err(e) => {
                tracing::error!("cannot open the store to lead: {e}");
                self.fence.hold(0);
                return;
            }
        };
        match Fleet::spawn_leading(self.settings.clone(), Box::new(store), epoch as u64) {
            Ok((handle, task)) => {
                if let Ok(tx) = handle.sender() {
                    self.route.send_replace(Route::Fleet(tx));
                }
                self.task = Some(task);
                tracing::info!(epoch, "control loop started");
            }
            Err(e) => {
                tracing::error!("cannot load the fleet state to lead: {e}");
                // Give the term up: the monitor sees the fence drop.
                self.fence.hold(0);
            }
        }
    }

    async fn resign(&mut self) {
        self.route.send_replace(Route::Elsewhere { leader: None });
        if let Some(task) = self.task.take() {
            task.stop().await;
            tracing::info!("control loop stopped");
        }
    }
}

/// What `coordinator::run` needs of the HA part.
pub struct Leading {
    pub fleet: FleetHandle,
    pub role: watch::Receiver<Role>,
    pub etcd: Etcd,
    pub keys: Keys,
    pub election: tokio::task::JoinHandle<()>,
}

/// Joins the election; the handle routes to the fleet task while leading.
/// etcd unreachable at start is an error naming the endpoints.
pub async fn start(
    settings: FleetSettings,
    etcd_settings: EtcdStoreSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Leading> {
    let etcd = Etcd::new(&etcd_settings.etcd)?;
    let keys = Keys::new(&etcd_settings.prefix);
    etcd.get(keys.leader().as_bytes())
        .await
        .map_err(|e| anyhow::anyhow!("cannot start: {e}"))?;
    let (route_tx, route_rx) = watch::channel(Route::Elsewhere { leader: None });
    let (role_tx, role) = watch::channel(Role::NoLeader);
    let me = Member {
        name: etcd_settings.name.clone(),
        address: etcd_settings.advertise.clone(),
        http: etcd_settings.advertise_http.clone(),
    };
    // A follower's refusals name the leader.
    tokio::spawn({
        let mut role = role.clone();
        let route = route_tx.clone();
        async move {
            loop {
                let leader = match &*role.borrow_and_update() {
                    Role::Follower { leader, .. } => Some(leader.address.clone()),
                    _ => None,
                };
                route.send_if_modified(|r| match r {
                    Route::Elsewhere { leader: l } if *l != leader => {
                        *l = leader;
                        true
                    }
                    _ => false,
                });
                if role.changed().await.is_err() {
                    break;
                }
            }
        }
    });
    let fence = Arc::new(Fence::default());
    let term = FleetTerm {
        settings,
        etcd: etcd_settings.clone(),
        fence: fence.clone(),
        route: route_tx,
        task: None,
    };
    let candidate = election::Candidate {
        etcd: etcd.clone(),
        keys: keys.clone(),
        me,
        settings: ElectionSettings {
            ttl: etcd_settings.lease_ttl,
            keepalive: etcd_settings.lease_ttl.mul_f64(0.2),
        },
        fence: fence.clone(),
        role: role_tx,
    };
    let election = tokio::spawn(election::run(candidate, term, shutdown));
    Ok(Leading {
        fleet: FleetHandle::routed_in_term(route_rx, fence),
        role,
        etcd,
        keys,
        election,
    })
}

/// `coordinator status` as the coordinator whose role is `role` answers it.
pub async fn status_of(ha: &super::http::HaState) -> crate::api::HaStatus {
    let role = ha.role.borrow().clone();
    let mut s = status(&ha.etcd, &ha.keys).await;
    s.role = role.as_str().to_string();
    if let Role::Follower { leader, .. } = role {
        s.leader_address = leader.address;
    }
    s
}

/// The members, the leader and its epoch, etcd's health.
async fn status(etcd: &Etcd, keys: &Keys) -> crate::api::HaStatus {
    let mut members: Vec<crate::api::HaMember> = Vec::new();
    let (mut leader, mut epoch) = (String::new(), 0);
    if let Ok(Some(kv)) = etcd.get(keys.leader().as_bytes()).await {
        if let Ok(m) = serde_json::from_slice::<Member>(&kv.value) {
            leader = m.name;
            epoch = kv.create_revision;
        }
    }
    if let Ok(kvs) = etcd.range_prefix(keys.members().as_bytes()).await {
        for kv in kvs {
            if let Ok(m) = serde_json::from_slice::<Member>(&kv.value) {
                members.push(crate::api::HaMember {
                    role: if m.name == leader {
                        "leader"
                    } else {
                        "follower"
                    }
                    .into(),
                    name: m.name,
                    address: m.address,
                });
            }
        }
    }
    let store = etcd
        .status()
        .await
        .into_iter()
        .map(|(endpoint, r)| crate::api::EtcdEndpoint {
            healthy: r.is_ok(),
            detail: r.unwrap_or_else(|e| e),
            endpoint,
        })
        .collect();
    crate::api::HaStatus {
        backend: "etcd".into(),
        prefix: keys.prefix().to_string(),
        leader,
        epoch: epoch.max(0) as u64,
        members,
        store,
        ..Default::default()
    }
}
