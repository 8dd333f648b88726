//! Ids, timestamps, and the item helpers both backends use (mimetypes, the metadata merge).

use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

/// A new 24-hex-digit id: 4 bytes of Unix seconds then 8 random bytes, like a MongoDB
/// ObjectId, so ids sort roughly by creation time and never collide in practice.
pub fn new_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as u32;
    let random = uuid::Uuid::new_v4();
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&secs.to_be_bytes());
    bytes[4..].copy_from_slice(&random.as_bytes()[..8]);
    hex::encode(bytes)
}

/// UTC broken-down time of a Unix time in seconds: (year, month, day, hour, minute, second).
fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// Seconds since the epoch of a UTC timestamp `YYYY-MM-DDTHH:MM:SS[.fff]Z` (the form
/// Dataloop and this store write), or `None` for anything else.
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Howard Hinnant's days-from-civil, the inverse of `civil`.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let frac: f64 = if frac.is_empty() {
        0.0
    } else {
        format!("0.{frac}").parse().ok()?
    };
    Some((days * 86_400 + h * 3600 + mi * 60 + sec) as f64 + frac)
}

fn now_parts() -> (i64, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_millis())
}

/// `2024-05-01T12:00:00.123Z`, as Dataloop writes timestamps.
pub fn now_rfc3339() -> String {
    let (secs, millis) = now_parts();
    rfc3339(secs, millis)
}

pub fn rfc3339(secs: i64, millis: u32) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{millis:03}Z")
}

/// `2024_05_01-T12_00_00`: the template's model-name suffix `{YYYY_MM_DD-THH_MM_SS}` (UTC).
pub fn name_timestamp(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}_{mo:02}_{d:02}-T{h:02}_{mi:02}_{s:02}")
}

pub fn now_secs() -> i64 {
    now_parts().0
}

/// The mimetype Dataloop would record for a file name.
pub fn guess_mimetype(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "txt" => "text/plain",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

/// How `update_item` applies an item's metadata, on both backends: members of `over` are
/// written (objects member by member, `null` stored as `null`), members it leaves out are
/// kept. A copy read before someone else (or the platform) added a key cannot remove it.
pub(crate) fn merge_metadata(base: &mut Value, over: &Value) {
    merge_objects(base, over)
}

fn merge_objects(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge_objects(existing, v)
                    }
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) if !o.is_null() => *b = o.clone(),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_round_trips() {
        for secs in [0i64, 951_782_400, 1_733_400_000, 4_102_444_799] {
            let text = super::rfc3339(secs, 250);
            assert_eq!(
                super::parse_rfc3339(&text),
                Some(secs as f64 + 0.25),
                "{text}"
            );
        }
        for bad in [
            "",
            "2024-05-01",
            "2024-13-01T00:00:00Z",
            "2024-05-01T12:00:00+02:00",
        ] {
            assert_eq!(super::parse_rfc3339(bad), None, "{bad}");
        }
    }

    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T23:59:59Z, a leap day.
        assert_eq!(rfc3339(1_709_251_199, 5), "2024-02-29T23:59:59.005Z");
        assert_eq!(name_timestamp(1_709_251_199), "2024_02_29-T23_59_59");
    }

    #[test]
    fn ids_are_24_hex() {
        let a = new_id();
        assert!(crate::is_id(&a), "{a}");
        assert_ne!(a, new_id());
    }
}
