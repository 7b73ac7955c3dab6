//! The concurrency limits, proved from the hosts' side: every build and switch command
//! appends `start`/`end` lines (`date +%s.%N`, site, host) to a log on its host, and the
//! tests compute from them how many ran at once per host, group, site, fleet-wide, and how
//! many sites were being changed at once. Each limit must hold and must be reached (a test
//! that passes with the limits ignored, or with nothing in parallel, proves nothing).
//! Also: hosts joining and leaving a ServerGroup, and the limits on `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::{Duration, Instant};

use crate::daemon_tests::{Daemon, wait_until};
use crate::fleet::{Fleet, assert_exit, mtimes};
use crate::lab::LAB_MOUNT;

/// Where the commands of these sites log on each host.
const LOG: &str = "limits.log";

/// A site whose build and activate commands log their start and end on the host.
struct Site<'a> {
    name: &'a str,
    version: u32,
    /// (stage, group), in switch order; the first stage runs `once`.
    stages: &'a [(&'a str, &'a str)],
    max_parallel: u32,
    build_sleep: &'a str,
    switch_sleep: &'a str,
}

fn logged(what: &str, sleep: &str) -> String {
    let line = |edge: &str| {
        format!(
            "echo \"{edge} {what} $CONVOY_SITE $CONVOY_HOST $(date +%s.%N)\" >> {LAB_MOUNT}/{LOG}"
        )
    };
    format!(
        "\n    - '{}'\n    - sleep {sleep}\n    - '{}'",
        line("start"),
        line("end")
    )
}

fn site_docs(fleet: &Fleet, s: &Site) -> Vec<String> {
    let mut stages = String::new();
    for (i, (name, group)) in s.stages.iter().enumerate() {
        stages.push_str(&format!(
            "    - name: {name}\n      group: {group}\n      activate:{}\n",
            logged("switch", s.switch_sleep).replace("\n    ", "\n        ")
        ));
        if i == 0 {
            stages.push_str(&format!(
                "      once: ['echo \"$CONVOY_RELEASE $CONVOY_HOST\" >> {LAB_MOUNT}/once.log']\n"
            ));
        }
    }
    let mut docs = vec![format!(
        "apiVersion: convoy.dev/v1alpha1\nkind: Site\nmetadata: {{name: {name}}}\nspec:\n  release: {name}.r{v}\n  path: {LAB_MOUNT}/sites/{name}\n  stages:\n{stages}  fetch:\n    git: {{repository: {repo}}}\n  build:{build}\n  rollout: {{maxParallel: {mp}}}\n  keepReleases: 3\n",
        name = s.name,
        v = s.version,
        repo = fleet.repo().display(),
        build = logged("build", s.build_sleep),
        mp = s.max_parallel,
    )];
    for v in 1..=2 {
        docs.push(format!(
            "apiVersion: convoy.dev/v1alpha1\nkind: Release\nmetadata: {{name: {name}.r{v}}}\nspec: {{site: {name}, revision: v{v}}}\n",
            name = s.name
        ));
    }
    docs
}

/// One command run: what (build or switch), site, host, start and end time on the host.
#[derive(Debug, Clone)]
struct Run {
    what: String,
    site: String,
    host: String,
    start: f64,
    end: f64,
}

/// Every complete command run logged on hosts `0..hosts`; panics on a start without an end.
fn runs(fleet: &Fleet, hosts: usize) -> Vec<Run> {
    let mut open: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    let mut runs = vec![];
    for i in 0..hosts {
        let text = fs::read_to_string(fleet.lab.host_dir(i).join(LOG)).unwrap_or_default();
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(w.len(), 5, "log line `{line}`");
            let key = (w[1].to_string(), w[2].to_string(), w[3].to_string());
            let t: f64 = w[4].parse().unwrap();
            match w[0] {
                "start" => assert!(open.insert(key, t).is_none(), "twice: {line}"),
                "end" => {
                    let start = open
                        .remove(&key)
                        .unwrap_or_else(|| panic!("no start: {line}"));
                    runs.push(Run {
                        what: key.0,
                        site: key.1,
                        host: key.2,
                        start,
                        end: t,
                    });
                }
                _ => panic!("log line `{line}`"),
            }
        }
    }
    assert!(open.is_empty(), "started, never ended: {open:?}");
    runs
}

/// The most intervals open at one instant (an end at the same instant as a start closes first).
fn most_at_once(intervals: impl IntoIterator<Item = (f64, f64)>) -> usize {
    let mut edges: Vec<(f64, i32)> = intervals
        .into_iter()
        .flat_map(|(s, e)| [(s, 1), (e, -1)])
        .collect();
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

fn spans(runs: &[&Run]) -> Vec<(f64, f64)> {
    runs.iter().map(|r| (r.start, r.end)).collect()
}

#[test]
fn most_at_once_counts_overlaps_and_not_touching_intervals() {
    assert_eq!(most_at_once([]), 0);
    assert_eq!(most_at_once([(0.0, 1.0), (1.0, 2.0)]), 1);
    assert_eq!(most_at_once([(0.0, 3.0), (1.0, 2.0), (1.5, 4.0)]), 3);
    assert_eq!(most_at_once([(0.0, 1.0), (2.0, 3.0), (0.5, 2.5)]), 2);
}

/// Asserts `measured <= limit` and `measured == limit` (the limit was reached).
fn holds_and_reached(what: &str, measured: usize, limit: usize, report: &mut Vec<String>) {
    report.push(format!("{what}: {measured} at once (limit {limit})"));
    assert!(
        measured <= limit,
        "{what}: {measured} at once, limit {limit}"
    );
    assert_eq!(
        measured, limit,
        "{what}: the limit {limit} was never reached (nothing ran in parallel?)"
    );
}

/// 10 sites x 10 hosts, two stages on two interleaved groups: every limit holds at every
/// instant and each one is reached.
#[test]
fn every_limit_holds_at_once_and_each_is_reached_on_ten_sites_by_ten_hosts() {
    const HOSTS: usize = 10;
    const SITES: usize = 10;
    // One build per host (the default): with it ignored, two or more sites build on one
    // host at once here. (The joining test below reaches a higher per-host limit.)
    let (global, max_sites, per_host, site_mp) = (6, 4, 1, 3);
    let group_caps = [("ga", 3usize), ("gb", 4usize)];
    let fleet = Fleet::new(HOSTS);
    let even: Vec<usize> = (0..HOSTS).step_by(2).collect();
    let odd: Vec<usize> = (1..HOSTS).step_by(2).collect();
    let mut docs = vec![
        fleet.group("ga", &even, Some(group_caps[0].1 as u32)),
        fleet.group("gb", &odd, Some(group_caps[1].1 as u32)),
    ];
    let names: Vec<String> = (0..SITES).map(|i| format!("s{i}")).collect();
    for name in &names {
        docs.extend(site_docs(
            &fleet,
            &Site {
                name,
                version: 1,
                stages: &[("a", "ga"), ("b", "gb")],
                max_parallel: site_mp as u32,
                build_sleep: "0.5",
                switch_sleep: "0.3",
            },
        ));
    }
    fleet.write(&docs);
    let started = Instant::now();
    let out = fleet.reconcile(&[
        "--timeout",
        "6m",
        "--max-parallel",
        &global.to_string(),
        "--max-sites",
        &max_sites.to_string(),
        "--max-builds-per-host",
        &per_host.to_string(),
    ]);
    assert_exit(&out, 0);
    let took = started.elapsed();
    let runs = runs(&fleet, HOSTS);
    let count = |what: &str| runs.iter().filter(|r| r.what == what).count();
    assert_eq!(count("build"), SITES * HOSTS, "one build per site and host");
    assert_eq!(
        count("switch"),
        SITES * HOSTS,
        "one switch per site and host"
    );

    let mut report = vec![format!("deployed in {took:?}")];
    let group_of = |host: &str| {
        let i: usize = host[1..].parse().unwrap();
        if i.is_multiple_of(2) { "ga" } else { "gb" }
    };
    // Builds per host.
    let per_host_most = (0..HOSTS)
        .map(|i| {
            let host = format!("h{i}");
            let builds: Vec<&Run> = runs
                .iter()
                .filter(|r| r.what == "build" && r.host == host)
                .collect();
            most_at_once(spans(&builds))
        })
        .max()
        .unwrap();
    holds_and_reached("builds on one host", per_host_most, per_host, &mut report);
    // Hosts of each group, builds and switches alike.
    for (group, cap) in group_caps {
        let in_group: Vec<&Run> = runs.iter().filter(|r| group_of(&r.host) == group).collect();
        holds_and_reached(
            &format!("group {group}"),
            most_at_once(spans(&in_group)),
            cap,
            &mut report,
        );
    }
    // Each site's own hosts.
    let per_site = names
        .iter()
        .map(|name| {
            let own: Vec<&Run> = runs.iter().filter(|r| &r.site == name).collect();
            let most = most_at_once(spans(&own));
            assert!(
                most <= site_mp,
                "{name}: {most} at once, rollout.maxParallel {site_mp}"
            );
            most
        })
        .max()
        .unwrap();
    holds_and_reached("hosts of one site", per_site, site_mp, &mut report);
    // The whole fleet.
    let all: Vec<&Run> = runs.iter().collect();
    holds_and_reached(
        "hosts fleet-wide",
        most_at_once(spans(&all)),
        global,
        &mut report,
    );
    // Sites being changed: from a site's first build start to its last switch end.
    let site_spans = names.iter().map(|name| {
        let own = runs.iter().filter(|r| &r.site == name);
        let start = own.clone().map(|r| r.start).fold(f64::MAX, f64::min);
        let end = own.map(|r| r.end).fold(f64::MIN, f64::max);
        (start, end)
    });
    holds_and_reached(
        "sites at once",
        most_at_once(site_spans),
        max_sites,
        &mut report,
    );
    eprintln!("{}", report.join("\n"));
}

/// Builds the fleet of the joining tests: group `web` of `hosts`, the sites on it, deployed.
fn sites_on_web(fleet: &Fleet, names: &[&str], web: &[usize], version: u32) -> Vec<String> {
    let mut docs = vec![fleet.group("web", web, None)];
    for name in names {
        docs.extend(site_docs(
            fleet,
            &Site {
                name,
                version,
                stages: &[("web", "web")],
                max_parallel: 10,
                build_sleep: "0.6",
                switch_sleep: "0",
            },
        ));
    }
    docs
}

/// A host added to a group that five sites use catches up with every site's release, one
/// build at a time by default and never more than `--max-builds-per-host` at once.
#[test]
fn a_host_joining_a_group_of_several_sites_gets_their_releases_one_build_at_a_time() {
    let fleet = Fleet::new(4);
    let names = ["s1", "s2", "s3", "s4", "s5"];
    fleet.write(&sites_on_web(&fleet, &names, &[0, 1], 1));
    assert_exit(&fleet.reconcile(&["--max-builds-per-host", "5"]), 0);

    let catch_up = |host: usize, web: &[usize], extra: &[&str]| {
        fleet.write(&sites_on_web(&fleet, &names, web, 1));
        let out = fleet.reconcile(extra);
        assert_exit(&out, 0);
        for name in names {
            assert_eq!(
                fleet.current(host, name).as_deref(),
                Some(&*format!("{name}.r1"))
            );
        }
        let runs = runs(&fleet, 4);
        let builds: Vec<&Run> = runs
            .iter()
            .filter(|r| r.what == "build" && r.host == format!("h{host}"))
            .collect();
        let sites: BTreeSet<&str> = builds.iter().map(|r| r.site.as_str()).collect();
        assert_eq!(
            sites,
            BTreeSet::from(names),
            "h{host} built every site's release once"
        );
        assert_eq!(builds.len(), names.len());
        most_at_once(spans(&builds))
    };
    // The default: one build per host.
    let most = catch_up(2, &[0, 1, 2], &[]);
    assert_eq!(most, 1, "h2 caught up with several builds at once");
    // Three at once: the limit holds and is reached (so the catch-up does run in parallel).
    let most = catch_up(3, &[0, 1, 2, 3], &["--max-builds-per-host", "3"]);
    assert_eq!(most, 3, "h3: at most 3 builds at once, and 3 were reached");
    // The hosts already there built nothing again.
    let runs = runs(&fleet, 4);
    for host in ["h0", "h1"] {
        let builds = runs.iter().filter(|r| r.what == "build" && r.host == host);
        assert_eq!(builds.count(), names.len(), "{host} rebuilt");
    }
}

/// A host added to a group gets the desired release on the next pass, without `once`
/// running again; a host removed from the group is left exactly as it was, also when the
/// next release goes out.
#[test]
fn a_host_added_to_a_group_catches_up_without_once_and_a_removed_one_is_left_alone() {
    let fleet = Fleet::new(4);
    let docs = |web: &[usize], version: u32| {
        let mut docs = vec![fleet.group("db", &[0], None), fleet.group("web", web, None)];
        docs.extend(site_docs(
            &fleet,
            &Site {
                name: "app",
                version,
                stages: &[("db", "db"), ("web", "web")],
                max_parallel: 10,
                build_sleep: "0",
                switch_sleep: "0",
            },
        ));
        docs
    };
    fleet.write(&docs(&[1, 2], 1));
    assert_exit(&fleet.reconcile(&[]), 0);
    assert_eq!(fleet.once_log(4), vec!["app.r1 h0"]);

    // h3 joins, h2 leaves.
    let h2_site = fleet.lab.host_dir(2).join("sites/app");
    let h2_before = mtimes(&h2_site);
    fleet.write(&docs(&[1, 3], 1));
    assert_exit(&fleet.reconcile(&[]), 0);
    assert_eq!(
        fleet.current(3, "app").as_deref(),
        Some("app.r1"),
        "h3 joined"
    );
    assert_eq!(fleet.once_log(4), vec!["app.r1 h0"], "once ran again");
    assert_eq!(mtimes(&h2_site), h2_before, "the removed host was touched");

    // The next release: h2 keeps running r1, untouched.
    fleet.write(&docs(&[1, 3], 2));
    assert_exit(&fleet.reconcile(&[]), 0);
    for host in [0, 1, 3] {
        assert_eq!(fleet.current(host, "app").as_deref(), Some("app.r2"));
    }
    assert_eq!(fleet.current(2, "app").as_deref(), Some("app.r1"));
    assert_eq!(mtimes(&h2_site), h2_before, "the removed host was touched");
    assert_eq!(fleet.once_log(4), vec!["app.r1 h0", "app.r2 h0"]);
    let status = fleet.status_json();
    let hosts: Vec<&str> = status["items"][0]["status"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        hosts,
        vec!["h0", "h1", "h3"],
        "status lists the managed hosts only"
    );
}

/// The daemon shows each limit and how much of it is in use on `/metrics`: while six sites
/// deploy to two hosts, scrapes see the limits in use, never beyond them, and two sites at
/// once (`--max-sites 2`).
#[test]
fn the_daemon_shows_every_limit_and_its_use_on_metrics() {
    let fleet = Fleet::new(2);
    let names: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    let mut docs = vec![fleet.group("web", &[0, 1], Some(3))];
    for name in &names {
        docs.extend(site_docs(
            &fleet,
            &Site {
                name,
                version: 1,
                stages: &[("web", "web")],
                max_parallel: 10,
                build_sleep: "0.4",
                switch_sleep: "0",
            },
        ));
    }
    fleet.write(&docs);
    let daemon = Daemon::start_with(&fleet, "5m", &["--max-sites", "2", "--max-parallel", "7"]);
    let value = |metrics: &str, series: &str| -> Option<i64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    };
    let mut seen: BTreeMap<&str, i64> = BTreeMap::new();
    let watched = [
        r#"convoy_limit_in_use{limit="max_sites"}"#,
        r#"convoy_limit_in_use{limit="max_builds_per_host"}"#,
        r#"convoy_limit_in_use{limit="max_parallel"}"#,
        r#"convoy_group_limit_in_use{group="web"}"#,
        r#"convoy_site_limit_in_use{site="s0"}"#,
    ];
    let mut first = String::new();
    wait_until(
        Duration::from_secs(120),
        "every site live on both hosts",
        || {
            let (_, metrics) = daemon.get("/metrics");
            if first.is_empty() {
                first = metrics.clone();
            }
            for series in watched {
                if let Some(v) = value(&metrics, series) {
                    let most = seen.entry(series).or_default();
                    *most = (*most).max(v);
                }
            }
            names.iter().all(|n| {
                (0..2).all(|h| fleet.current(h, n).as_deref() == Some(&*format!("{n}.r1")))
            })
        },
    );
    for (series, value_) in [
        (r#"convoy_limit{limit="max_sites"}"#, 2),
        (r#"convoy_limit{limit="max_builds_per_host"}"#, 1),
        (r#"convoy_limit{limit="max_parallel"}"#, 7),
        (r#"convoy_group_limit{group="web"}"#, 3),
        (r#"convoy_site_limit{site="s0"}"#, 10),
    ] {
        assert_eq!(value(&first, series), Some(value_), "{series} in\n{first}");
    }
    // s0 has two hosts: its rollout.maxParallel of 10 is never reached.
    let limits = [2, 1, 7, 3, 2];
    for (series, limit) in watched.iter().zip(limits) {
        let most = seen.get(series).copied().unwrap_or(-1);
        assert!(
            (1..=limit).contains(&most),
            "{series}: most seen {most}, limit {limit}"
        );
    }
    assert_eq!(
        seen[watched[0]], 2,
        "two sites at once were seen by some scrape: {seen:?}"
    );
    wait_until(Duration::from_secs(30), "no site slot in use", || {
        value(&daemon.get("/metrics").1, watched[0]) == Some(0)
    });
}
