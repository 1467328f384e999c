//! The runner over in-memory hosts: order, stopping, dry runs, and what it records.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::*;
use crate::host::system::fake::FakeSystem;
use crate::operator::progress::Silent;

fn cluster() -> Arc<ClusterFile> {
    let yaml = "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: t\nspec:\n  hosts:\n    - name: s1\n      address: 10.0.0.1\n      role: server\n    - name: a1\n      address: 10.0.0.2\n      role: agent\n";
    Arc::new(crate::cluster::parse("t.yaml", std::path::Path::new("/"), yaml).unwrap())
}

fn context(dry_run: bool) -> RunContext {
    let cluster = cluster();
    let fleet = Fleet::in_process(&cluster, |_| Arc::new(FakeSystem::new()));
    RunContext::new(cluster, fleet, RunOptions { command: "test", dry_run, concurrency: 2 }, Arc::new(Silent))
}

/// A phase that logs its name when it runs, and fails or plans as told.
struct Step {
    name: &'static str,
    log: Arc<Mutex<Vec<&'static str>>>,
    fails: bool,
    applies: bool,
    plans: bool,
    stops_a_dry_run: bool,
}

#[async_trait]
impl Phase for Step {
    fn name(&self) -> &'static str {
        self.name
    }
    fn applies(&self, _: &RunContext) -> bool {
        self.applies
    }
    fn dry_run(&self, _: &RunContext) -> Option<String> {
        (!self.plans).then(|| format!("{} would happen", self.name))
    }
    fn failure_stops_a_dry_run(&self) -> bool {
        self.stops_a_dry_run
    }
    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        self.log.lock().unwrap().push(self.name);
        run.slots.put(self.name.len());
        if self.fails {
            run.host("a1").fail(HostError { kind: "failed".into(), message: "boom".into(), retryable: false });
            PhaseRun::Failed(format!("{} failed", self.name))
        } else {
            run.host("s1").state = HostState::Changed;
            PhaseRun::Done(format!("{} done", self.name))
        }
    }
}

fn steps(log: &Arc<Mutex<Vec<&'static str>>>, spec: &[(&'static str, bool, bool, bool)]) -> Vec<Box<dyn Phase>> {
    spec.iter()
        .map(|&(name, fails, applies, plans)| {
            Box::new(Step { name, log: log.clone(), fails, applies, plans, stops_a_dry_run: true }) as Box<dyn Phase>
        })
        .collect()
}

#[tokio::test]
async fn phases_run_in_order_and_a_failure_stops_the_rest() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut run = context(false);
    let phases = steps(&log, &[("one", false, true, true), ("two", true, true, true), ("three", false, true, true)]);
    run_phases(&mut run, &phases).await;
    assert_eq!(*log.lock().unwrap(), vec!["one", "two"]);
    let states: Vec<_> = run.report.phases.iter().map(|p| (p.name, p.state)).collect();
    assert_eq!(states, vec![("one", PhaseState::Done), ("two", PhaseState::Failed), ("three", PhaseState::NotRun)]);
    assert_eq!(run.report.phases[1].message, "two failed");
    assert!(!run.report.succeeded());
    assert_eq!(run.report.host("a1").unwrap().state, HostState::Failed);
    assert_eq!(run.report.host("a1").unwrap().error.as_ref().unwrap().message, "boom");
}

#[tokio::test]
async fn a_phase_that_does_not_apply_is_recorded_and_not_run() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut run = context(false);
    run_phases(&mut run, &steps(&log, &[("lock", false, false, true), ("work", false, true, true)])).await;
    assert_eq!(*log.lock().unwrap(), vec!["work"]);
    assert_eq!(run.report.phases[0].state, PhaseState::NotApplicable);
    assert!(run.report.phases[0].ok, "not applying is no failure");
}

#[tokio::test]
async fn a_dry_run_runs_planning_phases_and_describes_the_others() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut run = context(true);
    run_phases(&mut run, &steps(&log, &[("plan", false, true, true), ("ready", false, true, false)])).await;
    assert_eq!(*log.lock().unwrap(), vec!["plan"], "only the planning phase ran");
    let phases: Vec<_> = run.report.phases.iter().map(|p| (p.name, p.state, p.message.as_str())).collect();
    assert_eq!(
        phases,
        vec![("plan", PhaseState::Planned, "plan done"), ("ready", PhaseState::Planned, "ready would happen")]
    );
}

#[tokio::test]
async fn a_dry_run_goes_on_past_a_failure_that_does_not_stop_one_and_still_fails() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let step = |name, fails, stops_a_dry_run| {
        Box::new(Step { name, log: log.clone(), fails, applies: true, plans: true, stops_a_dry_run }) as Box<dyn Phase>
    };
    let phases = vec![
        step("checks", true, false),
        step("plan", false, true),
        step("install", true, true),
        step("after", false, true),
    ];
    let mut run = context(true);
    run_phases(&mut run, &phases).await;
    assert_eq!(*log.lock().unwrap(), vec!["checks", "plan", "install"], "the plan went on past the checks only");
    let states: Vec<_> = run.report.phases.iter().map(|p| (p.name, p.state)).collect();
    assert_eq!(
        states,
        vec![
            ("checks", PhaseState::Failed),
            ("plan", PhaseState::Planned),
            ("install", PhaseState::Failed),
            ("after", PhaseState::NotRun)
        ]
    );
    assert!(!run.report.succeeded());

    // Outside a dry run the same failure stops the run where it happened.
    log.lock().unwrap().clear();
    let mut run = context(false);
    run_phases(&mut run, &phases).await;
    assert_eq!(*log.lock().unwrap(), vec!["checks"]);
}

#[tokio::test]
async fn hosts_no_phase_reached_end_skipped() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut run = context(false);
    run_phases(&mut run, &steps(&log, &[("one", false, true, true)])).await;
    assert_eq!(run.report.host("s1").unwrap().state, HostState::Changed);
    assert_eq!(run.report.host("a1").unwrap().state, HostState::Skipped);
    assert!(!run.report.succeeded(), "a host left untouched is not a success");
}

#[test]
fn slots_hold_one_value_per_type() {
    let mut slots = Slots::default();
    slots.put(3usize);
    slots.put(String::from("token"));
    slots.put(4usize);
    assert_eq!(slots.get::<usize>(), Some(&4));
    assert_eq!(slots.take::<String>().as_deref(), Some("token"));
    assert!(slots.get::<String>().is_none());
}
