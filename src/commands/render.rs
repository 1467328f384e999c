//! Terminal output: progress while hosts work, tables or JSON at the end.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use comfy_table::{presets::UTF8_BORDERS_ONLY, Cell, Color, ContentArrangement, Table};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use k3node::artifacts::{DownloadProgress, NoProgress};
use k3node::operator::preflight::{HostOutcome, PreflightRun};
use k3node::operator::progress::Observer;
use k3node::operator::reset::ResetRun;
use k3node::operator::up::{NodeState, UpRun};
use k3node::protocol::k3s::FileAction;
use k3node::protocol::preflight::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Spinners per host on a terminal; one plain line per finished host otherwise.
pub struct TerminalObserver {
    multi: MultiProgress,
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
    Arc::new(TerminalObserver { multi, bars, interactive })
}

impl Observer for TerminalObserver {
    fn phase(&self, host: &str, phase: &str) {
        if let Some(bar) = self.bars.get(host) {
            bar.set_message(phase.to_string());
        }
        tracing::debug!(host, phase);
    }

    fn done(&self, host: &str, ok: bool, summary: &str) {
        let mark = if ok { "ok" } else { "FAILED" };
        match self.bars.get(host) {
            Some(bar) if self.interactive => bar.finish_with_message(format!("{mark}: {summary}")),
            _ => {
                let _ = self.multi.println(format!("{host}: {mark}: {summary}"));
                if !self.interactive {
                    eprintln!("{host}: {mark}: {summary}");
                }
            }
        }
    }
}

pub fn preflight(output: Output, run: &PreflightRun) -> anyhow::Result<()> {
    match output {
        Output::Json => {
            println!("{}", serde_json::to_string_pretty(run)?);
            Ok(())
        }
        Output::Table => {
            for host in &run.hosts {
                println!("\n{} ({}, {:?})", host.host, host.address, host.role);
                match &host.outcome {
                    HostOutcome::Error { kind, message } => println!("  NOT CHECKED [{kind}]: {message}"),
                    HostOutcome::Report(report) => {
                        for fix in &report.fixes_applied {
                            println!("  fixed: {fix}");
                        }
                        let mut table = Table::new();
                        table.load_preset(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic);
                        if table.width().is_none() {
                            // Not a terminal: wrap at a width that reads well in CI logs and pagers.
                            table.set_width(140);
                        }
                        table.set_header(["", "check", "found", "fix"]);
                        let mut checks: Vec<_> = report.checks.iter().collect();
                        checks.sort_by_key(|c| std::cmp::Reverse(c.status));
                        for c in checks {
                            table.add_row([
                                status_cell(c.status),
                                Cell::new(&c.id),
                                Cell::new(&c.reason),
                                Cell::new(c.fix.as_deref().unwrap_or("")),
                            ]);
                        }
                        println!("{table}");
                    }
                }
            }
            let mut summary = Table::new();
            summary.load_preset(UTF8_BORDERS_ONLY);
            summary.set_header(["host", "role", "address", "result", "time"]);
            for host in &run.hosts {
                let result = match &host.outcome {
                    HostOutcome::Error { kind, .. } => Cell::new(format!("unreachable ({kind})")).fg(Color::Red),
                    HostOutcome::Report(r) => {
                        let fails = r.checks.iter().filter(|c| c.status == Status::Fail).count();
                        let warns = r.checks.iter().filter(|c| c.status == Status::Warn).count();
                        let text = format!("{} pass, {warns} warn, {fails} fail", r.checks.len() - fails - warns);
                        if fails > 0 {
                            Cell::new(text).fg(Color::Red)
                        } else {
                            Cell::new(text)
                        }
                    }
                };
                summary.add_row([
                    Cell::new(&host.host),
                    Cell::new(format!("{:?}", host.role).to_lowercase()),
                    Cell::new(&host.address),
                    result,
                    Cell::new(format!("{:.2}s", host.elapsed.as_secs_f64())),
                ]);
            }
            println!("\n{summary}");
            println!("{}", if run.passed() { "preflight passed" } else { "preflight FAILED" });
            Ok(())
        }
    }
}

fn status_cell(status: Status) -> Cell {
    match status {
        Status::Pass => Cell::new("pass").fg(Color::Green),
        Status::Warn => Cell::new("warn").fg(Color::Yellow),
        Status::Fail => Cell::new("FAIL").fg(Color::Red),
    }
}

pub fn up(output: Output, run: &UpRun) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(run)?);
        return Ok(());
    }
    if let Some(pf) = &run.preflight {
        if !pf.passed() {
            preflight(Output::Table, pf)?;
        }
    }
    println!();
    for phase in &run.phases {
        println!(
            "{} {:<13} {:>6.2}s  {}",
            if phase.ok { "✓" } else { "✗" },
            phase.name,
            phase.elapsed.as_secs_f64(),
            phase.message
        );
    }
    if run.dry_run {
        for node in &run.nodes {
            let changed: Vec<_> = node.changes.iter().filter(|c| c.action != FileAction::Unchanged).collect();
            if changed.is_empty() && !node.binary_uploaded {
                continue;
            }
            println!("\n{} would change:", node.host);
            if node.binary_uploaded {
                println!("  /usr/local/bin/k3s: new binary {}", run.version.as_deref().unwrap_or(""));
            }
            for c in changed {
                println!("  {}: {:?}", c.path, c.action);
                if let Some(diff) = &c.diff {
                    for line in diff.lines() {
                        println!("    {line}");
                    }
                }
            }
        }
    }
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header(["node", "role", "k3s", "state", "time"]);
    for node in &run.nodes {
        let state = format!("{:?}", node.state).to_lowercase();
        let state = match node.state {
            NodeState::Failed | NodeState::Skipped => Cell::new(state).fg(Color::Red),
            NodeState::Restarted | NodeState::Changed | NodeState::WouldChange => Cell::new(state).fg(Color::Yellow),
            NodeState::Unchanged => Cell::new(state).fg(Color::Green),
        };
        table.add_row([
            Cell::new(&node.host),
            Cell::new(format!("{:?}", node.role).to_lowercase()),
            Cell::new(node.version.as_deref().unwrap_or("-")),
            state,
            Cell::new(format!("{:.1}s", node.elapsed.as_secs_f64())),
        ]);
    }
    println!("\n{table}");
    for node in run.nodes.iter().filter(|n| n.error.is_some()) {
        println!("{}: {}", node.host, node.error.as_deref().unwrap_or_default());
    }
    println!(
        "{}",
        if run.succeeded() {
            if run.dry_run {
                "dry run: nothing was changed"
            } else {
                "cluster is up"
            }
        } else {
            "up FAILED"
        }
    );
    Ok(())
}

pub fn reset(output: Output, run: &ResetRun) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(run)?);
        return Ok(());
    }
    for host in &run.hosts {
        println!("\n{} ({:?})", host.host, host.role);
        match &host.error {
            Some(e) => println!("  FAILED: {e}"),
            None if host.actions.is_empty() => println!("  nothing to do"),
            None => host.actions.iter().for_each(|a| println!("  {a}")),
        }
    }
    println!(
        "{}",
        if !run.succeeded() {
            "reset FAILED"
        } else if run.dry_run {
            "dry run: nothing was changed"
        } else {
            "reset done"
        }
    );
    Ok(())
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
