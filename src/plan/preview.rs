//! What `convoy plan` prints: every step a pass would take if each one succeeded, and where
//! it would end. The successful answers go through [`fold`], the same code a real pass
//! uses, so the preview and the rollout share one state model.

use super::{Observed, Outcome, PassState, Step, fold, plan};
use crate::desired::DesiredSite;
use crate::host::protocol::{Answer, HostAnswer, Op, OpStatus, StepReport};

/// Plans and folds successful answers until no step is left.
pub fn preview(site: &DesiredSite, observed: &Observed, pass: &PassState) -> (Vec<Step>, Outcome) {
    let mut observed = observed.clone();
    let mut pass = pass.clone();
    let mut all = vec![];
    // Each phase changes the state, so a pass needs at most a few rounds per host.
    for _ in 0..4 * observed.len() + 8 {
        let next = plan(site, &observed, &pass);
        if next.steps.is_empty() {
            return (all, next.outcome);
        }
        for step in &next.steps {
            fold(
                site,
                &mut observed,
                &mut pass,
                step,
                &reports_of_success(step),
            );
        }
        all.extend(next.steps);
    }
    (all, Outcome::Progressing)
}

/// Every host's answer to `step` when it succeeds everywhere.
pub fn reports_of_success(step: &Step) -> Vec<StepReport> {
    step.hosts()
        .into_iter()
        .map(|host| StepReport {
            host: host.clone(),
            answer: Answer::Ran(Box::new(answer_of_success(step, host))),
        })
        .collect()
}

/// What a host answers when every operation of `step` succeeds on it.
fn answer_of_success(step: &Step, host: &str) -> HostAnswer {
    let (ops, removed, once): (&[Op], Vec<String>, Option<i32>) = match step {
        Step::Build { .. } => (&[Op::LeaseAcquire, Op::Prepare, Op::Build], vec![], None),
        Step::Once { .. } => (&[Op::Once], vec![], Some(0)),
        Step::Switch { cleanup, .. } => (
            &[
                Op::Pending,
                Op::Switch,
                Op::Activate,
                Op::Settled,
                Op::LeaseRelease,
            ],
            cleanup.get(host).cloned().unwrap_or_default(),
            None,
        ),
        Step::Rollback { .. } => (&[Op::Rollback, Op::Activate], vec![], None),
        Step::Cleanup { remove, .. } => (&[Op::Cleanup], remove.clone(), None),
    };
    HostAnswer {
        ops: ops.iter().map(|op| (op.clone(), OpStatus::Done)).collect(),
        built: matches!(step, Step::Build { .. }),
        removed,
        once,
        tail: "exit status 0".into(),
        ..HostAnswer::default()
    }
}
