//! Terminal output: progress while hosts work, then the run's report as short tables or JSON.
//! Short means: what failed or needs attention, and the final line names it; `-v` shows all.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use comfy_table::{presets::UTF8_BORDERS_ONLY, Cell, Color, ContentArrangement, Table};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use k3node::artifacts::{DownloadProgress, NoProgress};
use k3node::operator::engine::{ChangeAction, HostResult, HostState, PhaseState, RunReport};
use k3node::operator::progress::Observer;
use k3node::protocol::preflight::{Check, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// What the report's words depend on besides the report.
pub struct RenderOptions {
    /// The cluster file given, for hints that name a command (None in local mode).
    pub config: Option<PathBuf>,
    /// `-v`: every check and change, not only what needs attention.
    pub verbose: u8,
}

impl RenderOptions {
    fn command(&self, command: &str) -> String {
        match &self.config {
            Some(path) => format!("`k3node {command}{}`", super::config_flag(path)),
            None => format!("`k3node {command} --local`"),
        }
    }
}

/// Spinners per host on a terminal; one plain line per finished host otherwise.
pub struct TerminalObserver {
    /// Owns the bars' drawing; dropped with the observer.
    _multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    interactive: bool,
}

impl TerminalObserver {
    pub fn finish(&self) {
        for bar in self.bars.values() {
            if !bar.is_finished() {
                bar.finish();
            }
        }
    }
}

pub fn observer<'a>(output: Output, hosts: impl Iterator<Item = &'a str>) -> Arc<TerminalObserver> {
    let interactive = output == Output::Table && std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if interactive {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template("{spinner} {prefix:<16} {msg} {elapsed:>4}").expect("static template");
    let bars = hosts
        .map(|h| {
            let bar = multi.add(ProgressBar::new_spinner().with_style(style.clone()).with_prefix(h.to_string()));
            bar.enable_steady_tick(Duration::from_millis(120));
            (h.to_string(), bar)
        })
        .collect();
    Arc::new(TerminalObserver { _multi: multi, bars, interactive })
}

impl Observer for TerminalObserver {
    fn phase(&self, host: &str, phase: &str) {
        if let Some(bar) = self.bars.get(host) {
            bar.set_message(phase.to_string());
        }
        tracing::debug!(host, phase);
    }

    fn done(&self, host: &str, _ok: bool, summary: &str) {
        match self.bars.get(host) {
            Some(bar) if self.interactive => bar.finish_with_message(summary.to_string()),
            _ if !self.interactive && self.bars.contains_key(host) => eprintln!("{host}: {summary}"),
            _ => {}
        }
    }
}

/// Prints a run's report: JSON as is, or tables for a terminal.
pub fn report(output: Output, report: &RunReport, options: &RenderOptions) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    match report.command {
        "preflight" => preflight(report, options),
        _ => run(report, options),
    }
    Ok(())
}

pub fn table() -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic);
    if table.width().is_none() {
        // Not a terminal: wrap at a width that reads well in CI logs and pagers.
        table.set_width(140);
    }
    table
}

fn status_cell(status: Status) -> Cell {
    match status {
        Status::Pass => Cell::new("pass").fg(Color::Green),
        Status::Warn => Cell::new("warn").fg(Color::Yellow),
        Status::Fail => Cell::new("FAIL").fg(Color::Red),
    }
}

pub fn state_cell(state: HostState) -> Cell {
    let cell = Cell::new(state.as_str());
    match state {
        HostState::Failed | HostState::Skipped => cell.fg(Color::Red),
        HostState::Restarted | HostState::Changed | HostState::Installed | HostState::WouldChange => {
            cell.fg(Color::Yellow)
        }
        HostState::Unchanged => cell.fg(Color::Green),
    }
}

/// The checks of one host worth showing: failures and warnings, or all with `-v`.
fn shown_checks<'a>(host: &'a HostResult, options: &RenderOptions) -> Vec<&'a Check> {
    let mut checks: Vec<&Check> =
        host.checks.iter().filter(|c| options.verbose > 0 || c.status != Status::Pass).collect();
    checks.sort_by_key(|c| std::cmp::Reverse(c.status));
    checks
}

fn print_checks(host: &HostResult, options: &RenderOptions) {
    let checks = shown_checks(host, options);
    if checks.is_empty() {
        return;
    }
    let mut t = table();
    t.set_header(["", "check", "found", "fix"]);
    for c in checks {
        t.add_row([
            status_cell(c.status),
            Cell::new(&c.id),
            Cell::new(&c.reason),
            Cell::new(c.fix.as_deref().unwrap_or("")),
        ]);
    }
    println!("{t}");
}

fn preflight(report: &RunReport, options: &RenderOptions) {
    for host in &report.hosts {
        let shown = shown_checks(host, options);
        if shown.is_empty() && host.notes.is_empty() && host.error.is_none() {
            continue;
        }
        println!("\n{} ({}, {})", host.host, host.address, host.role);
        for note in &host.notes {
            println!("  {note}");
        }
        if host.checks.is_empty() {
            if let Some(e) = &host.error {
                println!("  not checked ({}): {}", e.kind, e.message);
            }
        }
        print_checks(host, options);
    }
    let mut summary = table();
    summary.set_header(["host", "role", "address", "result", "time"]);
    let mut failing = Vec::new();
    for host in &report.hosts {
        let result = if host.checks.is_empty() {
            let kind = host.error.as_ref().map(|e| e.kind.as_str()).unwrap_or("not checked");
            failing.push(format!("{}: {kind}", host.host));
            Cell::new(format!("not checked: {kind}")).fg(Color::Red)
        } else {
            let count = |s| host.checks.iter().filter(|c| c.status == s).count();
            let (fails, warns, passes) = (count(Status::Fail), count(Status::Warn), count(Status::Pass));
            for c in host.checks.iter().filter(|c| c.status == Status::Fail) {
                failing.push(format!("{}: {} ({})", host.host, c.id, c.reason));
            }
            let text = format!("{passes} pass, {warns} warn, {fails} fail");
            if fails > 0 {
                Cell::new(text).fg(Color::Red)
            } else {
                Cell::new(text)
            }
        };
        summary.add_row([
            Cell::new(&host.host),
            Cell::new(host.role.as_str()),
            Cell::new(&host.address),
            result,
            Cell::new(format!("{:.2}s", host.elapsed.as_secs_f64())),
        ]);
    }
    println!("\n{summary}");
    if failing.is_empty() {
        println!("preflight passed ({})", k3node::words::count(report.hosts.len(), "host"));
    } else {
        println!("preflight FAILED: {}", failing.join("; "));
    }
}

fn run(report: &RunReport, options: &RenderOptions) {
    // Preflight inside `up`: only what failed or warns, per host.
    let checked = report.hosts.iter().any(|h| !h.checks.is_empty());
    if checked && report.hosts.iter().any(|h| h.checks.iter().any(|c| c.status == Status::Fail)) {
        for host in report.hosts.iter().filter(|h| h.checks.iter().any(|c| c.status != Status::Pass)) {
            println!("\n{} preflight:", host.host);
            print_checks(host, &RenderOptions { config: None, verbose: 0 });
        }
    }
    println!();
    for phase in &report.phases {
        let mark = match phase.state {
            PhaseState::Done => "✓",
            PhaseState::Failed => "✗",
            PhaseState::Planned => "·",
            PhaseState::NotApplicable | PhaseState::NotRun => "-",
        };
        if phase.state == PhaseState::NotApplicable && options.verbose == 0 {
            continue;
        }
        let message = match phase.state {
            PhaseState::NotRun => "not run: an earlier phase failed",
            PhaseState::NotApplicable => "nothing to do",
            _ => phase.message.as_str(),
        };
        println!("{mark} {:<13} {:>6.2}s  {message}", phase.name, phase.elapsed.as_secs_f64());
    }
    for host in &report.hosts {
        let changed: Vec<_> =
            host.changes.iter().filter(|c| options.verbose > 0 || c.action != ChangeAction::Unchanged).collect();
        let show = report.dry_run || report.command == "reset" || options.verbose > 0;
        if !show || (changed.is_empty() && host.notes.is_empty()) {
            continue;
        }
        let heading = match (report.dry_run, report.command) {
            (true, _) => "would change",
            (false, "reset") => "reset",
            _ => "changed",
        };
        println!("\n{} {heading}:", host.host);
        for c in changed {
            let action = match c.action {
                ChangeAction::Created => "create",
                ChangeAction::Updated => "update",
                ChangeAction::Unchanged => "unchanged",
                ChangeAction::Removed => "remove",
                ChangeAction::Done => "",
            };
            if action.is_empty() {
                println!("  {}", c.subject);
            } else {
                println!("  {action} {}", c.subject);
            }
            if let Some(detail) = &c.detail {
                for line in detail.lines() {
                    println!("      {line}");
                }
            }
        }
        for note in &host.notes {
            println!("  {note}");
        }
    }
    if report.command != "reset" {
        let mut t = table();
        t.set_header(["node", "role", "k3s", "state", "time"]);
        for host in &report.hosts {
            t.add_row([
                Cell::new(&host.host),
                Cell::new(host.role.as_str()),
                Cell::new(host.version.as_deref().unwrap_or("-")),
                state_cell(host.state),
                Cell::new(format!("{:.1}s", host.elapsed.as_secs_f64())),
            ]);
        }
        println!("\n{t}");
    }
    for host in &report.hosts {
        if let Some(e) = &host.error {
            // Transport errors already start with the host's name; it is said once.
            let message = e.message.strip_prefix(&format!("{}: ", host.host)).unwrap_or(&e.message);
            println!("{} ({}): {message}", host.host, e.kind);
        }
    }
    let verdict = match (report.succeeded(), report.dry_run, report.command) {
        (true, true, _) => "dry run: nothing was changed".to_string(),
        (true, false, "reset") => "reset done".to_string(),
        (true, false, _) => "cluster is up".to_string(),
        (false, _, command) => {
            let failed: Vec<&str> =
                report.hosts.iter().filter(|h| h.state.is_failure()).map(|h| h.host.as_str()).collect();
            let phase =
                report.phases.iter().find(|p| p.state == PhaseState::Failed).map(|p| p.name).unwrap_or("a host");
            let mut line = format!("{command} FAILED at {phase}");
            if !failed.is_empty() {
                line.push_str(&format!(" ({})", failed.join(", ")));
            }
            if phase == "preflight" {
                line.push_str(&format!("; see {}; --ignore-preflight overrides", options.command("preflight")));
            }
            if report.dry_run {
                line.push_str("; dry run: nothing was changed");
            }
            line
        }
    };
    println!("{verdict}");
}

/// A progress bar for downloads on a terminal; nothing otherwise.
pub fn download_progress(output: Output) -> Box<dyn DownloadProgress> {
    if output == Output::Table && std::io::stderr().is_terminal() {
        Box::new(DownloadBar(ProgressBar::hidden()))
    } else {
        Box::new(NoProgress)
    }
}

struct DownloadBar(ProgressBar);

impl DownloadProgress for DownloadBar {
    fn started(&self, what: &str, total: Option<u64>) {
        self.0.set_draw_target(ProgressDrawTarget::stderr());
        self.0.set_length(total.unwrap_or(0));
        // A retry starts over and reports what is already on disk again.
        self.0.set_position(0);
        self.0.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("static template")
                .progress_chars("=> "),
        );
        self.0.set_message(what.to_string());
    }
    fn advanced(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn finished(&self) {
        self.0.finish_and_clear();
    }
}
