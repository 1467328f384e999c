//! systemd's time syntax, as systemd.time(7) defines it: calendar events (a timer's
//! `OnCalendar=`) and time spans (`RandomizedDelaySec=`, retention ages).
//!
//! Read here so that a cluster file with a schedule systemd would refuse is refused before any
//! host is touched, with the part that is wrong named. The grammar follows systemd's parser
//! (calendarspec.c): an optional weekday list, an optional date, an optional time, an optional
//! timezone (`UTC` or an IANA name); or one of the shorthands (`daily`, `hourly`...). The test
//! below checks every accepted and refused example against the real `systemd-analyze calendar`.

use std::path::Path;

/// The shorthands systemd expands (`daily` is `*-*-* 00:00:00`).
const SHORTHANDS: &[&str] =
    &["minutely", "hourly", "daily", "monthly", "weekly", "yearly", "annually", "quarterly", "semiannually"];

const WEEKDAYS: &[(&str, &str)] = &[
    ("mon", "monday"),
    ("tue", "tuesday"),
    ("wed", "wednesday"),
    ("thu", "thursday"),
    ("fri", "friday"),
    ("sat", "saturday"),
    ("sun", "sunday"),
];

/// Where IANA timezones live; when the directory exists, a zone must be in it (systemd checks the
/// host's tzdata too).
const ZONEINFO: &str = "/usr/share/zoneinfo";

/// Checks a calendar event (`OnCalendar=`); the error says which part is wrong.
pub fn calendar(text: &str) -> Result<(), String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return Err("the schedule is empty".into());
    }
    let mut words = &words[..];
    if words.len() > 1 {
        let last = words[words.len() - 1];
        if is_timezone(last)? {
            words = &words[..words.len() - 1];
        }
    }
    if let [word] = words {
        if SHORTHANDS.contains(&word.to_ascii_lowercase().as_str()) {
            return Ok(());
        }
    }
    // "Wed, 17:48": a weekday list may end with a comma before the space.
    let mut rest = words;
    if let Some(first) = rest.first() {
        if first.starts_with(|c: char| c.is_ascii_alphabetic()) {
            weekdays(first.strip_suffix(',').unwrap_or(first))?;
            rest = &rest[1..];
        }
    }
    match rest {
        [] if words.len() == 1 => Ok(()),
        [] => Err("nothing follows the weekdays".into()),
        [one] if one.contains(':') => time(one),
        [one] => date(one),
        [d, t] => {
            date(d)?;
            time(t)
        }
        _ => {
            Err(format!("{:?} has more parts than a calendar event (weekdays, date, time, timezone)", words.join(" ")))
        }
    }
}

/// `UTC`, or an IANA name (`Europe/Berlin`) that the operator's tzdata knows when it has one.
fn is_timezone(word: &str) -> Result<bool, String> {
    if word == "UTC" {
        return Ok(true);
    }
    let iana = word.contains('/')
        && word.split('/').all(|p| {
            !p.is_empty()
                && p.starts_with(|c: char| c.is_ascii_alphabetic())
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "_+-".contains(c))
        });
    if !iana {
        return Ok(false);
    }
    if Path::new(ZONEINFO).is_dir() && !Path::new(ZONEINFO).join(word).is_file() {
        return Err(format!("{word:?} is not a timezone this machine knows (see `timedatectl list-timezones`)"));
    }
    Ok(true)
}

fn weekday(word: &str) -> Result<usize, String> {
    let lower = word.to_ascii_lowercase();
    WEEKDAYS
        .iter()
        .position(|(short, long)| lower == *short || lower == *long)
        .ok_or_else(|| format!("{word:?} is not a weekday (Mon, Tue, ... or Monday, Tuesday, ...)"))
}

fn weekdays(list: &str) -> Result<(), String> {
    for item in list.split(',') {
        if item.is_empty() {
            return Err(format!("the weekday list {list:?} has an empty item"));
        }
        match item.split_once("..") {
            Some((from, to)) => {
                weekday(from)?;
                weekday(to)?;
            }
            None => {
                weekday(item)?;
            }
        }
    }
    Ok(())
}

/// `[year-]month-day`, or `[year-]month~day` (from the end of the month).
fn date(text: &str) -> Result<(), String> {
    let (head, day) = match text.rsplit_once('~') {
        Some((head, day)) => (head, day),
        None => match text.rsplit_once('-') {
            Some((head, day)) => (head, day),
            None => {
                return Err(format!("{text:?} is neither a date (month-day, year-month-day) nor a time (hour:minute)"))
            }
        },
    };
    let parts: Vec<&str> = head.split('-').collect();
    let (year, month) = match parts[..] {
        [month] => (None, month),
        [year, month] => (Some(year), month),
        _ => return Err(format!("the date {text:?} has more than year, month and day")),
    };
    if let Some(year) = year {
        component(year, "year", 0, 2199, false).map_err(|e| format!("in the date {text:?}: {e}"))?;
    }
    component(month, "month", 1, 12, false).map_err(|e| format!("in the date {text:?}: {e}"))?;
    component(day, "day", 1, 31, false).map_err(|e| format!("in the date {text:?}: {e}"))
}

/// `hour:minute[:second]`; seconds may have a fraction.
fn time(text: &str) -> Result<(), String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (hour, minute, second) = match parts[..] {
        [h, m] => (h, m, None),
        [h, m, s] => (h, m, Some(s)),
        _ => return Err(format!("the time {text:?} is not hour:minute or hour:minute:second")),
    };
    component(hour, "hour", 0, 23, false).map_err(|e| format!("in the time {text:?}: {e}"))?;
    component(minute, "minute", 0, 59, false).map_err(|e| format!("in the time {text:?}: {e}"))?;
    if let Some(second) = second {
        component(second, "second", 0, 59, true).map_err(|e| format!("in the time {text:?}: {e}"))?;
    }
    Ok(())
}

/// One field: `*`, or a comma list of `value`, `from..to`, each optionally `/repetition`.
fn component(text: &str, what: &str, min: u32, max: u32, fraction: bool) -> Result<(), String> {
    if text == "*" {
        return Ok(());
    }
    if text.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    for item in text.split(',') {
        let (range, repeat) = match item.split_once('/') {
            Some((range, repeat)) => (range, Some(repeat)),
            None => (item, None),
        };
        let (from, to) = match range.split_once("..") {
            Some((from, to)) => (value(from, what, min, max, fraction)?, Some(value(to, what, min, max, fraction)?)),
            None => (value(range, what, min, max, fraction)?, None),
        };
        if let Some(to) = to {
            if to < from {
                return Err(format!("the {what} range {range:?} ends before it starts"));
            }
        }
        if let Some(repeat) = repeat {
            let step = number(repeat, fraction)
                .ok_or_else(|| format!("the repetition {repeat:?} of the {what} is not a number"))?;
            if step <= 0.0 {
                return Err(format!("the repetition of the {what} must be more than 0, not {repeat:?}"));
            }
        }
    }
    Ok(())
}

fn value(text: &str, what: &str, min: u32, max: u32, fraction: bool) -> Result<f64, String> {
    let n = number(text, fraction).ok_or_else(|| format!("{text:?} is not a valid {what}"))?;
    // Two-digit years are this century's, as systemd reads them.
    let n = if what == "year" && text.len() <= 2 { n + 2000.0 } else { n };
    let (low, high) = if what == "year" { (1970.0, max as f64) } else { (min as f64, max as f64 + 0.999_999_5) };
    if n < low || n > high || (what != "second" && n > max as f64) {
        let shown = if what == "year" { format!("1970-{max}") } else { format!("{min}-{max}") };
        return Err(format!("the {what} {text} is out of range ({shown})"));
    }
    Ok(n)
}

fn number(text: &str, fraction: bool) -> Option<f64> {
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) if fraction => (w, Some(f)),
        Some(_) => return None,
        None => (text, None),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || whole.len() > 4 {
        return None;
    }
    if let Some(f) = frac {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    text.parse().ok()
}

/// A time span (`10min`, `1h 30min`, `14d`, a bare number of seconds) in microseconds.
pub fn timespan_us(text: &str) -> Result<u64, String> {
    const UNITS: &[(&[&str], f64)] = &[
        (&["usec", "us", "µs"], 1.0),
        (&["msec", "ms"], 1e3),
        (&["seconds", "second", "sec", "s"], 1e6),
        (&["minutes", "minute", "min", "m"], 60e6),
        (&["hours", "hour", "hr", "h"], 3600e6),
        (&["days", "day", "d"], 86400e6),
        (&["weeks", "week", "w"], 604800e6),
        (&["months", "month", "M"], 2_629_800e6),
        (&["years", "year", "y"], 31_557_600e6),
    ];
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("the time span is empty".into());
    }
    let mut rest = trimmed;
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        let value: f64 = number
            .parse()
            .ok()
            .filter(|_| !number.starts_with('.') && !number.ends_with('.'))
            .ok_or_else(|| format!("{trimmed:?} is not a time span (like 10min, 1h 30min, 14d)"))?;
        let after = after.trim_start();
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c.is_whitespace()).unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let factor =
            if unit.is_empty() {
                1e6
            } else {
                UNITS.iter().find(|(names, _)| names.contains(&unit)).map(|(_, f)| *f).ok_or_else(|| {
                    format!("{unit:?} in {trimmed:?} is not a time unit (us, ms, s, min, h, d, w, M, y)")
                })?
            };
        total += value * factor;
        rest = next.trim_start();
    }
    if total > u64::MAX as f64 / 2.0 {
        return Err(format!("{trimmed:?} is too long a time span"));
    }
    Ok(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepted and refused the way systemd itself accepts and refuses them.
    const VALID: &[&str] = &[
        "daily",
        "daily UTC",
        "hourly Europe/Berlin",
        "Mon..Fri 03:00",
        "Wed, 17:48",
        "*-*-* 03:00:00",
        "*-02~03",
        "Mon *-05~07/1",
        "2003-02..04-05",
        "05:40:23.4200004/3.1700005",
        "*:2/3",
        "*:*:0/5",
        "mon 3:0",
        "0..5/2:00",
        "12,14,13,12:20,10,30",
        "Sat,Thu,Mon..Wed,Sat..Sun",
        "2003-3-5",
        "70-01-01",
        "*~1",
        "03:00 Asia/Tokyo",
        "Mon..Mon",
        "minutely",
        "*:*",
        "*-*",
        "Wed..Sat,Tue 12-10-15 1:2:3",
        "03:00:0.5",
        "*:*:59.999999",
        "*-*-* 02:30:00 UTC",
    ];
    const INVALID: &[&str] = &[
        "*/5:00",
        "*:*:*/5",
        "10",
        "25:00",
        "Mon..Fry 3:00",
        "*-13-01",
        "*-*-32",
        "",
        "hourly Mars/Olympus",
        "1:2:3:4",
        "*-*-*-*",
        "3:00 UTC UTC",
        "weekly,",
        "Mon,,Tue 3:00",
        "*:0/0",
        "1969-01-01",
        "3:60",
        "tomorrow",
        "now",
        "*-*-1..40",
        "5..3:00",
        "Mon 2025-13-01",
        "* * * *",
        "*-*-* *",
        "12:",
        ":30",
        "1-2-3-4",
        "03:00:60",
        "*-1/0-1",
        "0 3 * * *",
    ];

    #[test]
    fn calendar_events_are_accepted_and_refused_as_systemd_does() {
        for text in VALID {
            assert_eq!(calendar(text), Ok(()), "{text:?}");
        }
        for text in INVALID {
            assert!(calendar(text).is_err(), "{text:?} was accepted");
        }
        let err = calendar("*-13-01 03:00").unwrap_err();
        assert!(err.contains("month 13 is out of range (1-12)"), "{err}");
        let err = calendar("0 3 * * *").unwrap_err();
        assert!(err.contains("more parts than a calendar event"), "{err}");
    }

    /// The same lists through the real `systemd-analyze calendar` of this machine.
    #[test]
    fn systemd_analyze_agrees_with_every_example() {
        let Ok(out) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
            panic!("systemd-analyze is missing: apt-get install systemd (the real parser these examples are checked against)");
        };
        assert!(out.status.success(), "systemd-analyze --version failed");
        let accepts = |text: &str| {
            std::process::Command::new("systemd-analyze")
                .args(["calendar", "--", text])
                .output()
                .expect("systemd-analyze runs")
                .status
                .success()
        };
        for text in VALID {
            assert!(accepts(text), "systemd refuses {text:?}, which k3node accepts");
        }
        for text in INVALID {
            assert!(!accepts(text), "systemd accepts {text:?}, which k3node refuses");
        }
    }

    #[test]
    fn time_spans_read_as_systemd_reads_them() {
        assert_eq!(timespan_us("0"), Ok(0));
        assert_eq!(timespan_us("10min"), Ok(600_000_000));
        assert_eq!(timespan_us("1h 30min"), Ok(5_400_000_000));
        assert_eq!(timespan_us("2hours"), Ok(7_200_000_000));
        assert_eq!(timespan_us("55s500ms"), Ok(55_500_000));
        assert_eq!(timespan_us("14d"), Ok(14 * 86_400_000_000));
        assert_eq!(timespan_us("1.5s"), Ok(1_500_000));
        assert_eq!(timespan_us("90"), Ok(90_000_000));
        for bad in ["", "ten minutes", "5 fortnights", "1..5s", "-5s", "5s-"] {
            assert!(timespan_us(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(timespan_us("5 fortnights").unwrap_err().contains("\"fortnights\""));
    }
}
