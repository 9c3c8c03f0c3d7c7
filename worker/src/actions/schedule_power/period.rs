//! Periods, as Instance Scheduler has them: the days of the week and the hours of the day,
//! in an IANA time zone, when a resource should be running.

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// When a resource runs: `begin` to `end` on `days`, in `tz`. A period whose `end` is before its
/// `begin` runs overnight: from `begin` on one of `days` to `end` the next morning.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Period {
    /// The days it starts on: `mon-fri`, `sat,sun`, `mon-wed,fri`, or `daily`.
    #[serde(default = "daily")]
    pub days: String,
    /// When it starts, `HH:MM`.
    pub begin: String,
    /// When it ends, `HH:MM`.
    pub end: String,
    /// The IANA time zone the times are in, such as `Europe/Berlin`.
    #[serde(default = "utc")]
    pub tz: String,
}

fn daily() -> String {
    "daily".into()
}

fn utc() -> String {
    "UTC".into()
}

const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

fn day(name: &str) -> Result<usize, String> {
    DAYS.iter()
        .position(|(n, _)| name.eq_ignore_ascii_case(n))
        .ok_or_else(|| format!("`{name}` is not a day (mon, tue, wed, thu, fri, sat, sun)"))
}

/// The days a `days` text names, as a set indexed Monday first.
fn days(text: &str) -> Result<[bool; 7], String> {
    let mut set = [false; 7];
    if text.trim().eq_ignore_ascii_case("daily") || text.trim() == "*" {
        return Ok([true; 7]);
    }
    for part in text.split(',').map(str::trim) {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (day(from.trim())?, day(to.trim())?);
                let mut d = from;
                loop {
                    set[d] = true;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => set[day(part)?] = true,
        }
    }
    Ok(set)
}

fn time(text: &str) -> Result<Time, String> {
    let (h, m) = text.split_once(':').ok_or_else(|| format!("`{text}` is not a time (HH:MM)"))?;
    let h: i8 = h.parse().map_err(|_| format!("`{text}` is not a time (HH:MM)"))?;
    let m: i8 = m.parse().map_err(|_| format!("`{text}` is not a time (HH:MM)"))?;
    Time::new(h, m, 0, 0).map_err(|_| format!("`{text}` is not a time of day (00:00 to 23:59)"))
}

/// A period, checked and ready to ask.
#[derive(Debug, Clone)]
pub struct Compiled {
    days: [bool; 7],
    begin: Time,
    end: Time,
    tz: TimeZone,
}

impl Period {
    /// The period checked: its days, times and time zone; the error is a one-line reason.
    pub fn compile(&self) -> Result<Compiled, String> {
        let tz = TimeZone::get(&self.tz).map_err(|_| format!("`{}` is not an IANA time zone", self.tz))?;
        let (begin, end) = (time(&self.begin)?, time(&self.end)?);
        if begin == end {
            return Err(format!("begin and end are both {}: the period would never run or never stop", self.begin));
        }
        Ok(Compiled { days: days(&self.days)?, begin, end, tz })
    }

    /// The period in a line, as summaries show it.
    pub fn text(&self) -> String {
        format!("{} {}–{} {}", self.days, self.begin, self.end, self.tz)
    }
}

impl Compiled {
    /// Whether a resource on this period runs at `now` (Unix ms).
    pub fn running_at(&self, now_ms: u64) -> bool {
        let Ok(at) = Timestamp::from_millisecond(now_ms as i64) else { return false };
        let local = at.to_zoned(self.tz.clone());
        let (today, time) = (local.weekday().to_monday_zero_offset() as usize, local.time());
        if self.begin < self.end {
            return self.days[today] && self.begin <= time && time < self.end;
        }
        // Overnight: the evening of a listed day, or the morning after one.
        let yesterday = (today + 6) % 7;
        (self.days[today] && time >= self.begin) || (self.days[yesterday] && time < self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> u64 {
        text.parse::<Timestamp>().expect("a timestamp").as_millisecond() as u64
    }

    fn period(days: &str, begin: &str, end: &str, tz: &str) -> Compiled {
        Period { days: days.into(), begin: begin.into(), end: end.into(), tz: tz.into() }.compile().expect("a period")
    }

    #[test]
    fn office_hours_in_berlin_follow_its_clock_across_summer_time() {
        let office = period("mon-fri", "08:00", "18:00", "Europe/Berlin");
        // Winter (UTC+1): 07:30 UTC is 08:30 in Berlin on a Wednesday.
        assert!(office.running_at(at("2026-01-14T07:30:00Z")));
        assert!(!office.running_at(at("2026-01-14T06:30:00Z")), "07:30 in Berlin");
        // Summer (UTC+2): 06:30 UTC is already 08:30.
        assert!(office.running_at(at("2026-07-15T06:30:00Z")));
        assert!(!office.running_at(at("2026-07-15T16:30:00Z")), "18:30 in Berlin");
        // Saturday.
        assert!(!office.running_at(at("2026-07-18T09:00:00Z")));
    }

    #[test]
    fn an_overnight_period_runs_from_the_evening_of_its_days_into_the_next_morning() {
        let batch = period("fri", "22:00", "06:00", "UTC");
        assert!(batch.running_at(at("2026-07-17T23:00:00Z")), "Friday night");
        assert!(batch.running_at(at("2026-07-18T05:00:00Z")), "Saturday morning, after Friday");
        assert!(!batch.running_at(at("2026-07-18T23:00:00Z")), "Saturday night");
        assert!(!batch.running_at(at("2026-07-17T05:00:00Z")), "Friday morning: Thursday is not a day of it");
    }

    #[test]
    fn day_lists_ranges_and_bad_input_are_named() {
        assert_eq!(days("mon-wed,fri").expect("days"), [true, true, true, false, true, false, false]);
        assert_eq!(days("sat-mon").expect("days"), [true, false, false, false, false, true, true]);
        assert_eq!(days("daily").expect("days"), [true; 7]);
        let bad = |d: &str, b: &str, e: &str, tz: &str| {
            Period { days: d.into(), begin: b.into(), end: e.into(), tz: tz.into() }.compile().expect_err("invalid")
        };
        assert!(bad("mon-fry", "08:00", "18:00", "UTC").contains("`fry` is not a day"));
        assert!(bad("mon", "8h", "18:00", "UTC").contains("`8h` is not a time"));
        assert!(bad("mon", "08:00", "24:30", "UTC").contains("not a time of day"));
        assert!(bad("mon", "08:00", "18:00", "Europe/Berln").contains("not an IANA time zone"));
        assert!(bad("mon", "08:00", "08:00", "UTC").contains("never"));
    }
}
