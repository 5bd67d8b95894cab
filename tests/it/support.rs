//! Pieces the integration test modules share.

use dexscope::sim::SimHandle;

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
