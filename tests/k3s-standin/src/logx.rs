//! Logs to stderr in logrus's text format, as k3s does (`time="..." level=info msg="..."`),
//! so that journald shows the same lines as for the real k3s.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static DEBUG: AtomicBool = AtomicBool::new(false);

pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

fn quote(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len() + 2);
    out.push('"');
    for c in msg.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn log(level: &str, msg: &str) {
    if level == "debug" && !DEBUG.load(Ordering::Relaxed) {
        return;
    }
    let line = format!(
        "time=\"{}\" level={} msg={}\n",
        crate::timefmt::rfc3339(crate::timefmt::now_secs()),
        level,
        quote(msg)
    );
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// logrus.Fatal: log and exit 1.
pub fn fatal(msg: &str) -> ! {
    log("fatal", msg);
    std::process::exit(1)
}

#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::logx::log("info", &format!($($t)*)) } }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::logx::log("warning", &format!($($t)*)) } }
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::logx::log("error", &format!($($t)*)) } }
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::logx::log("debug", &format!($($t)*)) } }
#[macro_export]
macro_rules! fatal { ($($t:tt)*) => { $crate::logx::fatal(&format!($($t)*)) } }
