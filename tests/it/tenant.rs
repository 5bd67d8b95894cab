//! The tenant connection built from a config file, against the simulated tenant over loopback.

use dexscope::config::Config;
use dexscope::model::{GroupMember, ObjectId};
use dexscope::sim::{self, SimOptions};
use dexscope::tenant::Tenant;
use secrecy::ExposeSecret;

#[tokio::test]
async fn a_config_pointed_at_the_simulated_tenant_reads_it() {
    let sim = sim::start(SimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.toml");
    let head = super::support::sim_config_head(&sim);
    std::fs::write(
        &config_path,
        format!(
            "{head}device_tag = \"DEX-Scoped\"\n\
             desired_state = \"desired.toml\"\n[state]\npath = \"state.db\"\n",
        ),
    )
    .unwrap();
    let secret = sim.client_secret().expose_secret().to_string();
    let config = Config::load(&config_path, [("DEXSCOPE_CLIENT_SECRET", secret.as_str())]).unwrap();
    let tenant = Tenant::from_config(&config).unwrap();

    for (resource, report) in tenant.tokens.self_check().await {
        let report = report.unwrap_or_else(|e| panic!("{resource:?}: {e}"));
        assert!(report.is_complete(), "{}", report.message);
    }
    let group = ObjectId::parse(&sim.user_group_id()).unwrap();
    let members = tenant.graph.list_group_members(&group).await.unwrap();
    let users = members
        .iter()
        .filter(|m| matches!(m, GroupMember::User { .. }))
        .count();
    assert_eq!(users, sim.group_members(&sim.user_group_id()).len());
    let tagged = tenant.defender.machines_by_tag("DEX-Scoped").await.unwrap();
    assert_eq!(tagged.len(), sim.machines_with_tag("DEX-Scoped").len());
    // The token cache answered every call above from one token per resource.
    let stats = sim.stats();
    assert_eq!(stats.tokens_issued, 2, "one token per resource: {stats:?}");
    sim.shutdown().await;
}
