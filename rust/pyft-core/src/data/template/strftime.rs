//! `strftime_now(format)`: the current time formatted with C `strftime` codes, as
//! transformers' `datetime.now().strftime(format)` does (Llama 3.1 templates print
//! "Today Date: 26 Jul 2024" with it).
//!
//! The time is UTC (pyft-core has no time-zone database); Python uses local time, which
//! is the same on machines running in UTC. Codes: `%a %A %b %B %c %d %e %f %H %I %j %m
//! %M %p %S %u %w %x %X %y %Y %z %Z %%` and the glibc no-padding form `%-d`, `%-m`, ….
//! Unknown codes are written as they are.

use std::time::{SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DateTime {
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub micros: u32,
    /// 0 = Monday .. 6 = Sunday
    pub weekday: u32,
    /// 1..=366
    pub yday: u32,
}

impl DateTime {
    /// The current UTC time.
    pub fn now() -> DateTime {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        DateTime::from_unix(d.as_secs() as i64, d.subsec_micros())
    }

    /// The UTC time `secs` seconds after 1970-01-01T00:00:00 plus `micros`.
    pub fn from_unix(secs: i64, micros: u32) -> DateTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        let yday = (days - days_from_civil(year, 1, 1)) as u32 + 1;
        DateTime {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            micros,
            // 1970-01-01 was a Thursday (3).
            weekday: (days + 3).rem_euclid(7) as u32,
            yday,
        }
    }
}

/// (year, month, day) of the day `days` after 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Count from 0000-03-01 so that the leap day ends each 4/100/400-year cycle.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st
    let mp = (5 * doy + 2) / 153; // month from March, 0..11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days from 1970-01-01 to (year, month, day).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats `t` with C `strftime` codes (see the module docs).
pub(crate) fn strftime(t: &DateTime, format: &str) -> String {
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.next_if_eq(&'-').is_some();
        let Some(code) = chars.next() else {
            out.push('%');
            if no_pad {
                out.push('-');
            }
            break;
        };
        let num = |out: &mut String, v: i64, width: usize| {
            if no_pad {
                out.push_str(&v.to_string());
            } else {
                out.push_str(&format!("{v:0width$}"));
            }
        };
        let hour12 = if t.hour.is_multiple_of(12) { 12 } else { t.hour % 12 };
        match code {
            'a' => out.push_str(&DAYS[t.weekday as usize][..3]),
            'A' => out.push_str(DAYS[t.weekday as usize]),
            'b' | 'h' => out.push_str(&MONTHS[t.month as usize - 1][..3]),
            'B' => out.push_str(MONTHS[t.month as usize - 1]),
            'c' => out.push_str(&strftime(t, "%a %b %e %H:%M:%S %Y")),
            'd' => num(&mut out, t.day.into(), 2),
            'e' => out.push_str(&if no_pad {
                t.day.to_string()
            } else {
                format!("{:2}", t.day)
            }),
            'f' => out.push_str(&format!("{:06}", t.micros)),
            'H' => num(&mut out, t.hour.into(), 2),
            'I' => num(&mut out, hour12.into(), 2),
            'j' => num(&mut out, t.yday.into(), 3),
            'm' => num(&mut out, t.month.into(), 2),
            'M' => num(&mut out, t.minute.into(), 2),
            'p' => out.push_str(if t.hour < 12 { "AM" } else { "PM" }),
            'S' => num(&mut out, t.second.into(), 2),
            'u' => out.push_str(&(t.weekday + 1).to_string()),
            'w' => out.push_str(&((t.weekday + 1) % 7).to_string()),
            'x' => out.push_str(&strftime(t, "%m/%d/%y")),
            'X' => out.push_str(&strftime(t, "%H:%M:%S")),
            'y' => num(&mut out, t.year.rem_euclid(100), 2),
            'Y' => out.push_str(&t.year.to_string()),
            'z' | 'Z' => {} // naive datetime: Python prints nothing
            '%' => out.push('%'),
            other => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        for days in [-800_000, -1, 0, 59, 365, 10_957, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_930), (2024, 7, 26));
    }

    #[test]
    fn formats_like_python() {
        // 2024-02-29T13:05:09.000123Z, a Thursday.
        let t = DateTime::from_unix(1_709_211_909, 123);
        assert_eq!(strftime(&t, "%d %b %Y"), "29 Feb 2024");
        assert_eq!(
            strftime(&t, "%A %B %-d, %y %I:%M:%S %p %j %f %%"),
            "Thursday February 29, 24 01:05:09 PM 060 000123 %"
        );
        assert_eq!(
            strftime(&t, "%c|%x|%X|%u|%w|%Q"),
            "Thu Feb 29 13:05:09 2024|02/29/24|13:05:09|4|4|%Q"
        );
    }
}
