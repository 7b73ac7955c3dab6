//! `convoy validate` on a generated fleet of 10,000 manifests (sites, releases, groups).
//! `cargo bench --bench validate` prints the figures; under `cargo test` it runs a small
//! smoke size so the code stays exercised without slowing the suite.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const GROUPS: usize = 100;
const HOSTS_PER_GROUP: usize = 20;

/// Writes `documents` manifests: GROUPS server groups, then Site+Release pairs in one file each.
fn generate(dir: &Path, documents: usize) -> usize {
    let groups = GROUPS.min(documents / 10).max(1);
    for g in 0..groups {
        let mut text = format!(
            "apiVersion: convoy.dev/v1alpha1\nkind: ServerGroup\nmetadata:\n  name: group-{g}\nspec:\n  ssh: {{user: deploy, connectTimeout: 5s}}\n  maxParallel: 5\n  hosts:\n"
        );
        for h in 0..HOSTS_PER_GROUP {
            writeln!(
                text,
                "    - name: g{g}-h{h}\n      address: 10.{}.{}.{h}",
                g / 250,
                g % 250
            )
            .unwrap();
        }
        std::fs::write(dir.join(format!("group-{g}.yaml")), text).unwrap();
    }
    let sites = (documents - groups) / 2;
    std::fs::create_dir_all(dir.join("sites")).unwrap();
    for s in 0..sites {
        let (a, b) = (s % groups, (s + 1) % groups);
        let text = format!(
            "apiVersion: convoy.dev/v1alpha1\nkind: Site\nmetadata:\n  name: site-{s}\n  labels: {{team: t{}}}\nspec:\n  release: site-{s}.r1\n  path: /srv/site-{s}\n  stages:\n    - name: scheduler\n      group: group-{a}\n      once: [\"php artisan migrate --force\"]\n    - name: web\n      group: group-{b}\n      optional: true\n      activate: [\"sudo systemctl reload php-fpm\"]\n  fetch:\n    git: {{repository: \"git@example.com:org/site-{s}.git\"}}\n  build: [\"composer install --no-dev\", \"npm ci && npm run build\"]\n  shared: [\".env\", \"storage/\"]\n  env: {{APP_ENV: production}}\n  health: {{command: \"curl -fsS http://127.0.0.1/health\", timeout: 10s, retries: 3, interval: 2s}}\n  rollout: {{batch: 2, maxParallel: 4, pause: 5s}}\n---\napiVersion: convoy.dev/v1alpha1\nkind: Release\nmetadata:\n  name: site-{s}.r1\nspec:\n  site: site-{s}\n  revision: v1.{s}.0\n",
            s % 7
        );
        std::fs::write(dir.join("sites").join(format!("site-{s}.yaml")), text).unwrap();
    }
    groups + sites * 2
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let (documents, runs) = if benchmarking { (10_000, 5) } else { (200, 1) };
    let tmp = tempfile::tempdir().unwrap();
    let written = generate(tmp.path(), documents);

    let mut samples = vec![];
    let mut summary = String::new();
    for _ in 0..runs {
        let start = Instant::now();
        let catalog = convoy::manifest::load(tmp.path())
            .unwrap_or_else(|e| panic!("generated manifests invalid:\n{e}"));
        samples.push(start.elapsed());
        summary = catalog.summary();
    }
    let lib = median(samples);
    println!(
        "validate (library): {written} manifests ({summary}) in {lib:.2?} median of {runs}; {:.1} µs/manifest",
        lib.as_secs_f64() * 1e6 / written as f64
    );

    // End to end through the binary, when a release build exists next to this bench.
    let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/convoy");
    if benchmarking && binary.exists() {
        let mut samples = vec![];
        for _ in 0..runs {
            let start = Instant::now();
            let out = Command::new(&binary)
                .args(["validate", "-f"])
                .arg(tmp.path())
                .output()
                .unwrap();
            samples.push(start.elapsed());
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!(
            "validate (binary, `convoy validate -f DIR`): {:.2?} median of {runs}",
            median(samples)
        );
    }
}
