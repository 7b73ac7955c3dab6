//! `dependsOn` on the lab: Site `shop` (host h1) depends on Site `lic` (host h0). The hosts
//! trace builds, health checks and activations with their times, so the order is read from
//! the hosts themselves, not from convoy's output.

use std::process::Command;
use std::time::Duration;

use crate::daemon_tests::{Daemon, wait_until};
use crate::fleet::{Fleet, SiteDef, assert_exit};
use crate::util::stdout;

/// `lic`'s health check also traces when it passed.
const TRACED_HEALTH: &str = "  health:\n    command: 'sh bin/health && echo \"health $CONVOY_SITE $CONVOY_HOST $(date +%s.%N)\" >> /srv/convoy-lab/trace.log'\n    timeout: 5s\n";

fn docs(fleet: &Fleet, lic_version: u32, lic_build_sleep: &str) -> Vec<String> {
    chain(
        fleet,
        &[("lic", lic_version, lic_build_sleep), ("shop", 1, "0")],
    )
}

/// Site i on host hi with its own group, release `<site>.r<version>`; each site after the
/// first depends on the one before it. The first one's health check is traced.
fn chain(fleet: &Fleet, sites: &[(&str, u32, &str)]) -> Vec<String> {
    let health = "  health: {command: sh bin/health, timeout: 5s, retries: 1, interval: 1s}\n";
    let keep = "  keepReleases: 3\n";
    let groups: Vec<String> = (0..sites.len()).map(|i| format!("g{i}")).collect();
    let mut docs: Vec<String> = (0..sites.len())
        .map(|i| fleet.group(&groups[i], &[i], None))
        .collect();
    for (i, (name, version, build_sleep)) in sites.iter().enumerate() {
        let stages = [("web", groups[i].as_str(), false, false)];
        let mut site = fleet.site(&SiteDef {
            name,
            version: *version,
            stages: &stages,
            build_sleep,
            ..SiteDef::default()
        });
        assert!(site[0].contains(health) && site[0].contains(keep));
        site[0] = match i {
            0 => site[0].replace(health, TRACED_HEALTH),
            _ => site[0].replace(keep, &format!("{keep}  dependsOn: [{}]\n", sites[i - 1].0)),
        };
        docs.extend(site);
    }
    docs
}

/// Times of trace lines `kind site ...` on host `i`: (release, time); build lines give
/// their start time.
fn times(fleet: &Fleet, i: usize, kind: &str, site: &str) -> Vec<(String, f64)> {
    fleet
        .trace(i)
        .iter()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[0] == kind && w[1] == site).then(|| match kind {
                "health" => (String::new(), w[3].parse().unwrap()),
                _ => (w[3].to_string(), w[4].parse().unwrap()),
            })
        })
        .collect()
}

fn status_of(fleet: &Fleet, site: &str) -> serde_json::Value {
    let status = fleet.status_json();
    let items = status["items"].as_array().unwrap();
    let item = items.iter().find(|i| i["metadata"]["name"] == site);
    item.map(|i| i["status"].clone()).unwrap_or_default()
}

#[test]
fn one_once_run_switches_the_dependency_first_while_the_dependent_builds_early() {
    let fleet = Fleet::new(2);
    fleet.write(&docs(&fleet, 1, "4"));
    let out = fleet.reconcile(&[]);
    assert_exit(&out, 0);
    assert_eq!(fleet.current(0, "lic").as_deref(), Some("lic.r1"));
    assert_eq!(fleet.current(1, "shop").as_deref(), Some("shop.r1"));
    let lic_healthy = times(&fleet, 0, "health", "lic")[0].1;
    let shop_built = times(&fleet, 1, "build", "shop")[0].1;
    let shop_live = times(&fleet, 1, "activate", "shop")[0].1;
    assert!(
        shop_live > lic_healthy,
        "shop switched at {shop_live}, before lic's health passed at {lic_healthy}"
    );
    assert!(
        shop_built < lic_healthy,
        "shop's build started at {shop_built}, only after lic's health at {lic_healthy}"
    );
    let text = stdout(&out);
    assert!(
        text.contains("switch waits for site lic"),
        "the wait is reported while it lasts:\n{text}"
    );
}

#[test]
fn a_chain_of_three_goes_live_link_by_link_in_one_once_run() {
    let fleet = Fleet::new(3);
    fleet.write(&chain(
        &fleet,
        &[("lic", 1, "2"), ("billing", 1, "0"), ("shop", 1, "0")],
    ));
    let out = fleet.reconcile(&[]);
    assert_exit(&out, 0);
    let live: Vec<f64> = [(0, "lic"), (1, "billing"), (2, "shop")]
        .iter()
        .map(|(i, site)| times(&fleet, *i, "activate", site)[0].1)
        .collect();
    assert!(live[0] < live[1] && live[1] < live[2], "{live:?}");
}

#[test]
fn a_failed_dependency_holds_its_dependent_until_a_new_release_fixes_it() {
    let fleet = Fleet::new(2);
    fleet.mark(0, "fail-build", true);
    fleet.write(&docs(&fleet, 1, "0"));
    let out = fleet.reconcile(&["--timeout", "5m"]);
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(
        text.contains("shop: Blocked: shop.r1 built; switch waits for site lic (Failed)"),
        "{text}"
    );
    let built = fleet
        .lab
        .host_dir(1)
        .join("sites/shop/releases/shop.r1/.convoy-complete");
    assert!(built.exists(), "shop built while it waited");
    assert_eq!(fleet.current(1, "shop"), None, "but did not switch");
    let shop = status_of(&fleet, "shop");
    assert_eq!(shop["phase"], "Blocked", "{shop}");
    assert_eq!(
        shop["message"],
        "shop.r1 built; switch waits for site lic (Failed)"
    );
    let table = stdout(&fleet.convoy(&["status"]));
    assert!(
        table.contains("switch waits for site lic (Failed)"),
        "{table}"
    );

    // The fix: a new release of lic on a host that builds again.
    fleet.mark(0, "fail-build", false);
    fleet.write(&docs(&fleet, 2, "0"));
    let plan = Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(["plan", "-f"])
        .arg(fleet.dir.path().join("manifests"))
        .arg("--state-dir")
        .arg(fleet.state())
        .arg("--known-hosts")
        .arg(fleet.lab.known_hosts())
        .output()
        .unwrap();
    assert_exit(&plan, 0);
    let plan = stdout(&plan);
    assert!(plan.starts_with("switch order: lic, shop\n"), "{plan}");
    assert!(
        plan.contains("=> Waiting: switch waits for site lic (Failed)"),
        "{plan}"
    );
    let out = fleet.reconcile(&["--timeout", "5m"]);
    assert_exit(&out, 0);
    assert_eq!(fleet.current(0, "lic").as_deref(), Some("lic.r2"));
    assert_eq!(fleet.current(1, "shop").as_deref(), Some("shop.r1"));
    assert_eq!(status_of(&fleet, "shop")["phase"], "Converged");
}

#[test]
fn the_daemon_releases_a_dependent_when_its_dependency_is_fixed_without_a_restart() {
    let fleet = Fleet::new(2);
    fleet.mark(0, "fail-build", true);
    fleet.write(&docs(&fleet, 1, "0"));
    let _daemon = Daemon::start(&fleet, "5m");
    wait_until(
        Duration::from_secs(60),
        "shop waits for the failed lic",
        || {
            status_of(&fleet, "shop")["message"]
                == "shop.r1 built; switch waits for site lic (Failed)"
        },
    );
    assert_eq!(fleet.current(1, "shop"), None);

    fleet.mark(0, "fail-build", false);
    fleet.write(&docs(&fleet, 2, "0"));
    // Well before the 5m resync: only lic's converged pass can have released shop.
    wait_until(Duration::from_secs(60), "shop switched after lic", || {
        fleet.current(1, "shop").as_deref() == Some("shop.r1")
    });
    wait_until(Duration::from_secs(30), "shop reports Converged", || {
        status_of(&fleet, "shop")["phase"] == "Converged"
    });
    let lic_healthy = times(&fleet, 0, "health", "lic")[0].1;
    let shop_live = times(&fleet, 1, "activate", "shop")[0].1;
    assert!(shop_live > lic_healthy, "{shop_live} <= {lic_healthy}");
}
