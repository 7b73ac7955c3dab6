//! Site statuses and history events for unit tests (the state dir's and the rendering's),
//! with fixed times and controller so outputs can be compared whole.

use super::{HostStatus, Phase, SiteObject, SiteStatus};
use crate::plan::EventKind;
use crate::state::HistoryEvent;

pub(crate) fn status(phase: Phase, desired: &str) -> SiteStatus {
    SiteStatus {
        manifest_commit: None,
        phase,
        desired_release: desired.to_owned(),
        revision: Some("3f2a9c1".to_owned()),
        message: String::new(),
        attempts: 0,
        last_transition_time: None,
        last_success_time: None,
        conditions: Vec::new(),
        hosts: Vec::new(),
    }
}

pub(crate) fn host(name: &str, stage: &str, release: Option<&str>, reachable: bool) -> HostStatus {
    HostStatus {
        name: name.to_owned(),
        stage: stage.to_owned(),
        release: release.map(str::to_owned),
        reachable,
        last_error: None,
    }
}

pub(crate) fn event(site: &str, time: &str, kind: EventKind) -> HistoryEvent {
    HistoryEvent {
        time: time.to_owned(),
        controller: "ctl:1".to_owned(),
        ..HistoryEvent::new(site, "r1", kind)
    }
}

pub(crate) fn object(name: &str, status: SiteStatus) -> SiteObject {
    SiteObject {
        name: name.to_owned(),
        labels: Default::default(),
        status,
    }
}
