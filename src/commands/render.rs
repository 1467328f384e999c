//! Terminal output: progress while hosts work, tables or JSON at the end.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use comfy_table::{presets::UTF8_BORDERS_ONLY, Cell, Color, ContentArrangement, Table};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use k3node::operator::preflight::{HostOutcome, PreflightRun};
use k3node::operator::progress::Observer;
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
    let multi = MultiProgress::with_draw_target(if interactive { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
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
                            table.add_row([status_cell(c.status), Cell::new(&c.id), Cell::new(&c.reason), Cell::new(c.fix.as_deref().unwrap_or(""))]);
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
                        if fails > 0 { Cell::new(text).fg(Color::Red) } else { Cell::new(text) }
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
