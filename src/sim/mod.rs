//! The simulated tenant: token endpoint, Graph and MDE subsets served over real HTTP on loopback.
//!
//! One port serves everything, routed by path: `/{tenant}/oauth2/v2.0/token`, Graph under
//! `/v1.0/…`, MDE under `/api/…`, and inspection under `/_sim/…`. The tenant lives in memory
//! behind one lock ([`model::Tenant`]); quotas ([`quota`]) and faults ([`faults`]) are applied
//! per call; [`seed`] generates a tenant from a seed and [`scenario`] reads one from TOML.
//! The simulator is a server only and shares no code with dexscope's clients.

pub mod faults;
pub mod model;
pub mod quota;
pub mod routes;
pub mod scenario;
pub mod seed;
pub mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

pub use faults::{FaultConfig, RouteFault};
pub use model::{DeltaRefusal, DeviceGroup, GroupRule, MachineView, Stats, Tenant, Violation};
pub use quota::{QuotaConfig, Surface};
pub use scenario::Scenario;
pub use seed::{IncidentSpec, SeedSpec};

use model::{Behaviour, EntraDevice, Machine, Os, TenantIds, UNASSIGNED_GROUP_ID, User};

/// Default application roles of Graph tokens.
pub const DEFAULT_GRAPH_ROLES: &[&str] = &[
    "GroupMember.ReadWrite.All",
    "User.Read.All",
    "SecurityIncident.ReadWrite.All",
];
/// Default application roles of MDE tokens.
pub const DEFAULT_MDE_ROLES: &[&str] = &["Machine.ReadWrite.All"];

/// How to start a simulated tenant.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Loopback address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    pub seed: u64,
    pub generate: SeedSpec,
    pub token_lifetime_secs: i64,
    pub graph_roles: Vec<String>,
    pub mde_roles: Vec<String>,
    /// How long MDE takes to re-place a machine after a tag or group change.
    pub placement_delay_secs: f64,
    pub incident_rate_per_min: f64,
    pub quotas: QuotaConfig,
    pub faults: FaultConfig,
    pub scenario: Option<Scenario>,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: 1,
            generate: SeedSpec::default(),
            token_lifetime_secs: 3599,
            graph_roles: DEFAULT_GRAPH_ROLES.iter().map(|s| s.to_string()).collect(),
            mde_roles: DEFAULT_MDE_ROLES.iter().map(|s| s.to_string()).collect(),
            placement_delay_secs: 30.0,
            incident_rate_per_min: 0.0,
            quotas: QuotaConfig::default(),
            faults: FaultConfig::default(),
            scenario: None,
        }
    }
}

/// Why the simulated tenant could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("refusing to listen on {addr}: the simulated tenant serves loopback addresses only")]
    NotLoopback { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}; pick another port with --listen")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Scenario(#[from] scenario::ScenarioError),
}

/// A running simulated tenant. Dropping it does not stop the server; call [`SimHandle::shutdown`].
pub struct SimHandle {
    addr: SocketAddr,
    state: Arc<Mutex<Tenant>>,
    ids: TenantIds,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`: the login, Graph and Defender base URL alike.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn tenant_id(&self) -> String {
        self.ids.tenant_id.to_string()
    }

    pub fn client_id(&self) -> String {
        self.ids.client_id.to_string()
    }

    /// The client secret the token endpoint accepts.
    pub fn client_secret(&self) -> SecretString {
        self.ids.client_secret.clone()
    }

    /// The object id of `Defender_Experts_Scoped_Coverage_Users`.
    pub fn user_group_id(&self) -> String {
        self.ids.user_group_id.to_string()
    }

    /// Direct access to the tenant for tests (hold the lock briefly).
    pub fn state(&self) -> Arc<Mutex<Tenant>> {
        self.state.clone()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Tenant) -> R) -> R {
        let mut t = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut t)
    }

    pub fn stats(&self) -> Stats {
        self.with(|t| t.stats.clone())
    }

    pub fn reset_stats(&self) {
        self.with(|t| t.stats = Stats::default());
    }

    /// Moves the simulated clock forward (tokens, placement, quotas and arrivals follow it).
    pub fn advance(&self, by: std::time::Duration) {
        self.with(|t| t.clock_offset_ms += by.as_millis() as i64);
    }

    pub fn set_faults(&self, faults: FaultConfig) {
        self.with(|t| t.faults.set(faults));
    }

    /// Every issued token stops working at once.
    pub fn invalidate_tokens(&self) {
        self.with(|t| t.tokens.clear());
    }

    pub fn set_token_lifetime(&self, secs: i64) {
        self.with(|t| t.behaviour.token_lifetime_secs = secs);
    }

    /// Changes applied through the API so far, oldest first.
    pub fn writes(&self) -> Vec<model::WriteRecord> {
        self.with(|t| t.writes.clone())
    }

    /// Object ids of the group's direct members.
    pub fn group_members(&self, group: &str) -> Vec<String> {
        let Ok(g) = Uuid::parse_str(group) else {
            return Vec::new();
        };
        self.with(|t| {
            t.group_members(&g)
                .into_iter()
                .map(|(m, _)| m.to_string())
                .collect()
        })
    }

    /// Adds (`true`) or removes a direct member out of band, as in the portal; the change
    /// shows in the next delta round. False when nothing changed or an id is not a GUID.
    pub fn set_member(&self, group: &str, member: &str, present: bool) -> bool {
        let (Ok(g), Ok(m)) = (Uuid::parse_str(group), Uuid::parse_str(member)) else {
            return false;
        };
        self.with(|t| {
            if present {
                t.directory.add_member(&g, m)
            } else {
                t.directory.remove_member(&g, &m)
            }
        })
    }

    /// Declares every delta link issued so far expired: its next use is refused with `how`.
    pub fn expire_delta_links(&self, how: DeltaRefusal) {
        self.with(|t| t.directory.expire_delta_links(how));
    }

    pub fn machine(&self, id: &str) -> Option<MachineView> {
        self.with(|t| t.machine_view(id))
    }

    pub fn machines_with_tag(&self, tag: &str) -> Vec<MachineView> {
        self.with(|t| t.machines_with_tag(tag))
    }

    pub fn device_groups(&self) -> Vec<DeviceGroup> {
        self.with(|t| t.mde.groups.clone())
    }

    pub fn add_device_group(&self, name: &str, rank: u32, rule: GroupRule) -> i64 {
        self.with(|t| t.add_device_group(name, rank, rule))
    }

    pub fn remove_device_group(&self, id: i64) -> bool {
        self.with(|t| t.remove_device_group(id))
    }

    pub fn set_device_group_rank(&self, id: i64, rank: u32) -> bool {
        self.with(|t| t.set_device_group_rank(id, rank))
    }

    pub fn create_incident(&self, spec: &IncidentSpec) -> String {
        self.with(|t| seed::create_incident(t, spec).to_string())
    }

    /// Makes `change` to an incident before the `after_polls`-th incident poll from now is
    /// served (1: the next poll sees it); 0 makes it at once. False when there is no such
    /// incident.
    pub fn plan_incident_change(
        &self,
        incident: &str,
        after_polls: u64,
        change: model::IncidentChange,
    ) -> bool {
        let Ok(id) = incident.parse::<u64>() else {
            return false;
        };
        self.with(|t| {
            let now = t.now();
            t.incidents.plan(id, after_polls, change, now)
        })
    }

    /// The comment texts of an incident, oldest first.
    pub fn comments(&self, incident: &str) -> Vec<String> {
        self.with(|t| {
            incident
                .parse::<u64>()
                .ok()
                .and_then(|n| t.incidents.get(n))
                .map(|i| i.comments.iter().map(|c| c.comment.clone()).collect())
                .unwrap_or_default()
        })
    }

    /// Stops serving and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Builds the tenant from the options (generated content, then the scenario), without serving.
pub fn build_tenant(opts: &SimOptions) -> Tenant {
    let sc = opts.scenario.clone().unwrap_or_default();
    let seed = sc.seed.unwrap_or(opts.seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1d5);
    let secret: String = (0..3)
        .map(|_| seed::uuid_from(&mut rng).simple().to_string())
        .collect::<Vec<_>>()
        .join("~");
    let ids = TenantIds {
        tenant_id: seed::uuid_from(&mut rng),
        tenant_domain: "contoso.onmicrosoft.com".into(),
        client_id: seed::uuid_from(&mut rng),
        client_secret: SecretString::from(secret),
        user_group_id: seed::uuid_from(&mut rng),
    };
    let behaviour = Behaviour {
        token_lifetime_secs: sc.token_lifetime_secs.unwrap_or(opts.token_lifetime_secs),
        graph_roles: opts.graph_roles.clone(),
        mde_roles: opts.mde_roles.clone(),
        placement_delay_ms: (sc.placement_delay_secs.unwrap_or(opts.placement_delay_secs) * 1000.0)
            as i64,
        incident_rate_per_min: sc
            .incident_rate_per_min
            .unwrap_or(opts.incident_rate_per_min),
    };
    let quotas = sc.quotas.clone().unwrap_or_else(|| opts.quotas.clone());
    let faults = sc.faults.clone().unwrap_or_else(|| opts.faults.clone());
    let mut t = Tenant::new(ids, behaviour, quotas, faults, seed);
    let spec = sc.generate.clone().unwrap_or_else(|| opts.generate.clone());
    seed::seed(&mut t, &spec, seed);
    apply_scenario(&mut t, &sc, &mut rng);
    t
}

fn apply_scenario(t: &mut Tenant, sc: &Scenario, rng: &mut ChaCha8Rng) {
    for u in &sc.users {
        let id =
            u.id.as_deref()
                .and_then(|s| Uuid::parse_str(s).ok())
                .unwrap_or_else(|| seed::uuid_from(rng));
        let name = u.display_name.clone().unwrap_or_else(|| u.upn.clone());
        t.directory.add_user(User {
            id,
            upn: u.upn.as_str().into(),
            display_name: name.into(),
        });
    }
    let gid = t.ids.user_group_id;
    let user_id = |t: &Tenant, upn: &str| t.directory.user_by_upn(upn).map(|u| u.id);
    for upn in &sc.scoped_group.members {
        if let Some(id) = user_id(t, upn) {
            t.directory.add_member(&gid, id);
        }
    }
    if let Some(nested) = &sc.scoped_group.nested_group {
        let nid = seed::uuid_from(rng);
        t.directory.add_group(nid, "Scenario-Nested-Group");
        t.directory.add_member(&gid, nid);
        for upn in nested {
            if let Some(id) = user_id(t, upn) {
                t.directory.add_member(&nid, id);
            }
        }
    }
    if let Some(name) = &sc.scoped_group.device {
        let d = EntraDevice {
            id: seed::uuid_from(rng),
            device_id: seed::uuid_from(rng),
            display_name: name.clone(),
        };
        let did = d.id;
        t.directory.add_device(d);
        t.directory.add_member(&gid, did);
    }
    for m in &sc.machines {
        let id =
            m.id.as_deref()
                .and_then(|s| model::parse_machine_id(&s.to_ascii_lowercase()))
                .unwrap_or_else(|| {
                    use sha2::Digest;
                    let d = sha2::Sha256::digest(m.name.as_bytes());
                    let mut id = [0u8; 20];
                    id.copy_from_slice(&d[..20]);
                    id
                });
        let tags = m.tags.iter().map(|tag| t.mde.intern_tag(tag)).collect();
        t.mde.add_machine(Machine {
            id,
            dns: m.name.as_str().into(),
            aad_device_id: m
                .aad_device_id
                .as_deref()
                .and_then(|s| Uuid::parse_str(s).ok()),
            os: Os::parse(&m.os).unwrap_or(Os::Windows11),
            tags,
            first_seen_min: 60 * 24,
            reported_group: UNASSIGNED_GROUP_ID,
            pending_since: None,
        });
    }
    if !sc.device_groups.is_empty() {
        // A scenario that lists device groups replaces the seeded ones.
        t.mde.groups.clear();
        let mut groups = sc.device_groups.clone();
        groups.sort_by_key(|g| g.rank);
        for g in groups {
            t.mde.add_group(&g.name, g.rank, g.rule.clone(), 0, 0);
        }
    }
    t.mde.place_all_now();
    for spec in &sc.incidents {
        seed::create_incident(t, spec);
    }
}

/// Builds the tenant and serves it on `opts.listen` (loopback only).
pub async fn start(opts: SimOptions) -> Result<SimHandle, SimError> {
    if !opts.listen.ip().is_loopback() {
        return Err(SimError::NotLoopback { addr: opts.listen });
    }
    let tenant = build_tenant(&opts);
    let ids = tenant.ids.clone();
    let state = Arc::new(Mutex::new(tenant));
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| SimError::Bind {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind {
        addr: opts.listen,
        source,
    })?;
    let app = server::router(state.clone()).into_make_service_with_connect_info::<server::Conn>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(server::SimListener(listener), app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(SimHandle {
        addr,
        state,
        ids,
        stop: Some(stop),
        task: Some(task),
    })
}

/// `dexscope sim`: serve a simulated tenant on loopback until Ctrl-C.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1:8400")]
    pub listen: SocketAddr,
    /// Users to generate.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// MDE machines to generate.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Incidents to generate (the first 24 cover every kind once).
    #[arg(long, default_value_t = 40)]
    pub incidents: usize,
    /// Seed of every random choice: the same seed gives the same tenant.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A TOML scenario describing the tenant by hand (see config/sim-scenario.example.toml).
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Put a nested group and an Entra device into the scoped user group.
    #[arg(long)]
    pub nested: bool,
    /// Shrink every quota budget and window by this factor (1 = the documented quotas).
    #[arg(long, default_value_t = 1.0)]
    pub quota_scale: f64,
    /// Seconds MDE takes to re-place a machine after a tag or device-group change.
    #[arg(long, default_value_t = 30.0)]
    pub placement_delay: f64,
    /// New incidents arriving per minute.
    #[arg(long, default_value_t = 0.0)]
    pub incident_rate: f64,
}

impl SimArgs {
    pub fn to_options(&self) -> Result<SimOptions, SimError> {
        let scenario = self.scenario.as_deref().map(Scenario::load).transpose()?;
        Ok(SimOptions {
            listen: self.listen,
            seed: self.seed,
            generate: SeedSpec {
                users: self.users,
                devices: self.devices,
                incidents: self.incidents,
                scoped_users: (self.users / 10).min(1000),
                nested: self.nested,
                ..SeedSpec::default()
            },
            placement_delay_secs: self.placement_delay,
            incident_rate_per_min: self.incident_rate,
            quotas: QuotaConfig {
                scale: self.quota_scale,
                ..QuotaConfig::default()
            },
            scenario,
            ..SimOptions::default()
        })
    }
}

/// The config snippet that points dexscope at a running simulator.
pub fn config_snippet(handle: &SimHandle) -> String {
    let base = handle.base_url();
    format!(
        "# dexscope simulated tenant on {base}\n\
         # the client secret it accepts:\n\
         #   export DEXSCOPE_CLIENT_SECRET='{secret}'\n\
         \n\
         [tenant]\n\
         tenant_id = \"{tenant}\"\n\
         client_id = \"{client}\"\n\
         client_secret_file = \"client-secret\"   # or leave it out and use DEXSCOPE_CLIENT_SECRET above\n\
         \n\
         [endpoints]\n\
         login = \"{base}\"\n\
         graph = \"{base}\"\n\
         defender = \"{base}\"\n\
         \n\
         [scope]\n\
         user_group_id = \"{group}\"\n\
         device_group_name = \"{dg}\"\n\
         device_tag = \"{tag}\"\n\
         \n\
         # inspection: {base}/_sim/stats\n",
        secret = handle.client_secret().expose_secret(),
        tenant = handle.tenant_id(),
        client = handle.client_id(),
        group = handle.user_group_id(),
        dg = model::DEVICE_GROUP_NAME,
        tag = model::DEVICE_TAG,
    )
}

/// Runs `dexscope sim`: prints the config snippet and serves until Ctrl-C.
pub async fn run_command(args: SimArgs) -> anyhow::Result<()> {
    let opts = args.to_options()?;
    let started = std::time::Instant::now();
    let handle = start(opts).await?;
    let (users, machines, incidents) = {
        let s = handle.state();
        let t = s.lock().unwrap_or_else(|p| p.into_inner());
        (
            t.directory.user_by_id.len(),
            t.mde.machines.len(),
            t.incidents.list.len(),
        )
    };
    println!(
        "# seeded {users} users, {machines} machines, {incidents} incidents in {:.1?}",
        started.elapsed()
    );
    println!("{}", config_snippet(&handle));
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await;
    Ok(())
}
