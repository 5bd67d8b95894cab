//! Pieces the integration test modules share.

use dexscope::sim::SimHandle;

/// The process-wide `reqwest::Client` as `Tenant::from_config` builds it (default HTTP settings),
/// for senders that share it, like the alert webhook.
pub fn shared_reqwest() -> reqwest::Client {
    let root = url::Url::parse("http://127.0.0.1/").unwrap();
    dexscope::http::Client::build_reqwest(&dexscope::http::Settings::new(root.clone(), root))
        .unwrap()
}

/// The start of a config pointed at the simulated tenant: its tenant and client ids, the three
/// endpoints on its loopback URL, and `[scope] user_group_id`. Callers append the rest of
/// `[scope]` and any further sections.
pub fn sim_config_head(sim: &SimHandle) -> String {
    let base = sim.base_url();
    format!(
        "[tenant]\ntenant_id = \"{}\"\nclient_id = \"{}\"\n\
         [endpoints]\nlogin = \"{base}\"\ngraph = \"{base}\"\ndefender = \"{base}\"\n\
         [scope]\nuser_group_id = \"{}\"\n",
        sim.tenant_id(),
        sim.client_id(),
        sim.user_group_id(),
    )
}
