//! One integration-test binary (faster links): every file here is a module.
mod archive_rss_tests;
mod cli_tests;
mod crd_tests;
mod daemon_tests;
mod dashboard_tests;
mod engine_tests;
mod fleet;
mod host_ops_tests;
mod lab;
mod lab_tests;
mod local_reconcile_tests;
mod paths_tests;
mod prom;
mod revision_tests;
mod transport_tests;
mod util;
mod validate_tests;
