//! convoy: a reconciliation controller that deploys web applications to fleets of servers
//! over SSH. The binary is a thin shell around this library, which tests call directly.

pub mod cancel;
pub mod cli;
pub mod commands;
pub mod controller;
pub mod desired;
pub mod execute;
pub mod exit_code;
pub mod host;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod progress;
pub mod state;
pub mod status;
