//! Dates S3 speaks: the SigV4 `x-amz-date` (`20130524T000000Z`), RFC 1123 `Last-Modified`
//! headers (`Fri, 24 May 2013 00:00:00 GMT`) and ISO 8601 `<LastModified>` in listings
//! (`2013-05-24T00:00:00.000Z`). Proleptic Gregorian calendar, UTC only.

/// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The civil date of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = if days >= 0 { days } else { days - 146_096 } / 146_097;
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYYMMDDTHHMMSSZ` of seconds since the epoch.
pub fn amz_date(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let seconds_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60
    )
}

fn valid_date(year: i64, month: u32, day: u32) -> bool {
    if !(1..=12).contains(&month) || day == 0 {
        return false;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    day <= days_in_month
}

fn epoch_ms(year: i64, month: u32, day: u32, hour: u32, minute: u32, second: u32, millis: u32) -> Option<u64> {
    if year < 1970 || !valid_date(year, month, day) || hour > 23 || minute > 59 || second > 60 || millis > 999 {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    Some(
        ((days * 86_400 + u64::from(hour) * 3600 + u64::from(minute) * 60 + u64::from(second)) * 1000)
            + u64::from(millis),
    )
}

fn number<T: std::str::FromStr>(text: &str, digits: usize) -> Option<T> {
    (text.len() == digits && text.bytes().all(|byte| byte.is_ascii_digit())).then(|| text.parse().ok())?
}

fn clock(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split(':');
    let hour = number(parts.next()?, 2)?;
    let minute = number(parts.next()?, 2)?;
    let second = number(parts.next()?, 2)?;
    parts.next().is_none().then_some((hour, minute, second))
}

/// Milliseconds since the epoch of an RFC 1123 date (`Fri, 24 May 2013 00:00:00 GMT`), the form
/// of HTTP's `Last-Modified`; `None` when it is not one.
pub fn parse_rfc1123_ms(text: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let mut fields = text.split_ascii_whitespace();
    let weekday = fields.next()?;
    if !weekday.ends_with(',') {
        return None;
    }
    let day: u32 = fields.next()?.parse().ok()?;
    let month_name = fields.next()?;
    let month = MONTHS.iter().position(|name| name.eq_ignore_ascii_case(month_name))? as u32 + 1;
    let year: i64 = number(fields.next()?, 4)?;
    let (hour, minute, second) = clock(fields.next()?)?;
    let zone = fields.next()?;
    if !(zone == "GMT" || zone == "UTC" || zone == "+0000") || fields.next().is_some() {
        return None;
    }
    epoch_ms(year, month, day, hour, minute, second, 0)
}

/// Milliseconds since the epoch of an ISO 8601 UTC timestamp (`2013-05-24T00:00:00.000Z`, the
/// fraction optional); `None` when it is not one.
pub fn parse_iso8601_ms(text: &str) -> Option<u64> {
    let (date, rest) = text.split_once('T')?;
    let rest = rest.strip_suffix('Z')?;
    let mut date_parts = date.split('-');
    let year: i64 = number(date_parts.next()?, 4)?;
    let month: u32 = number(date_parts.next()?, 2)?;
    let day: u32 = number(date_parts.next()?, 2)?;
    if date_parts.next().is_some() {
        return None;
    }
    let (time, fraction) = match rest.split_once('.') {
        Some((time, fraction)) => (time, Some(fraction)),
        None => (rest, None),
    };
    let (hour, minute, second) = clock(time)?;
    let millis = match fraction {
        None => 0,
        Some(fraction) if !fraction.is_empty() && fraction.bytes().all(|byte| byte.is_ascii_digit()) => {
            let padded: String = fraction.chars().chain("000".chars()).take(3).collect();
            padded.parse().ok()?
        }
        Some(_) => return None,
    };
    epoch_ms(year, month, day, hour, minute, second, millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_amz_dates() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_369_353_600), "20130524T000000Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(amz_date(4_102_444_799), "20991231T235959Z");
    }

    #[test]
    fn parses_rfc1123() {
        assert_eq!(parse_rfc1123_ms("Fri, 24 May 2013 00:00:00 GMT"), Some(1_369_353_600_000));
        assert_eq!(parse_rfc1123_ms("Tue, 29 Feb 2000 12:34:56 GMT"), Some(951_827_696_000));
        assert_eq!(parse_rfc1123_ms("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_rfc1123_ms("Fri, 30 Feb 2013 00:00:00 GMT"), None);
        assert_eq!(parse_rfc1123_ms("Fri, 24 Mai 2013 00:00:00 GMT"), None);
        assert_eq!(parse_rfc1123_ms("Fri, 24 May 2013 25:00:00 GMT"), None);
        assert_eq!(parse_rfc1123_ms("2013-05-24T00:00:00Z"), None);
        assert_eq!(parse_rfc1123_ms(""), None);
    }

    #[test]
    fn parses_iso8601() {
        assert_eq!(parse_iso8601_ms("2013-05-24T00:00:00.000Z"), Some(1_369_353_600_000));
        assert_eq!(parse_iso8601_ms("2013-05-24T00:00:00.5Z"), Some(1_369_353_600_500));
        assert_eq!(parse_iso8601_ms("2013-05-24T00:00:01Z"), Some(1_369_353_601_000));
        assert_eq!(parse_iso8601_ms("2013-05-24T00:00:01"), None);
        assert_eq!(parse_iso8601_ms("2013-13-24T00:00:01Z"), None);
        assert_eq!(parse_iso8601_ms("2013-05-24T00:00:01.Z"), None);
    }

    #[test]
    fn the_calendar_round_trips() {
        for days in [-1_000_000, -1, 0, 1, 59, 365, 10_957, 11_016, 2_932_896] {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days, "{year}-{month}-{day}");
        }
    }
}
