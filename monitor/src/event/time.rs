//! Timestamps: nanoseconds since the Unix epoch, written as RFC 3339 UTC.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, nanoseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Now, from the system clock.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }

    /// Seconds since the epoch, as a float.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }

    /// This time plus a duration.
    pub fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d.as_nanos() as u64))
    }

    /// Duration since an earlier time (zero if `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Self(
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        )
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        UNIX_EPOCH + Duration::from_nanos(t.0)
    }
}

/// A timestamp written out: RFC 3339 UTC with nanoseconds, exactly as
/// `humantime::format_rfc3339_nanos` writes it (`2026-11-28T15:17:25.226425747Z`).
struct Rfc3339([u8; 30]);

impl Rfc3339 {
    /// Formats by hand: every event carries two to four timestamps, and
    /// going through `fmt` (and, when serialized, through serde's escaping
    /// adapter) made them about a sixth of the agent's serialization time.
    fn of(t: Timestamp) -> Self {
        let secs = t.0 / 1_000_000_000;
        let nanos = t.0 % 1_000_000_000;
        let (days, of_day) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days);
        let mut out = *b"0000-00-00T00:00:00.000000000Z";
        let mut put = |at: usize, width: usize, mut value: u64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, of_day / 3600);
        put(14, 2, of_day / 60 % 60);
        put(17, 2, of_day % 60);
        put(20, 9, nanos);
        Self(out)
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// (year, month, day) of a count of days since 1970-01-01, in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`, for days >= 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Rfc3339::of(*self).as_str())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(Rfc3339::of(*self).as_str())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        humantime::parse_rfc3339(&text)
            .map(Timestamp::from)
            .map_err(|e| serde::de::Error::custom(format!("invalid timestamp {text:?}: {e}")))
    }
}

/// Converts the kernel's boot-time clock (`CLOCK_BOOTTIME`, which the probes
/// stamp records with) to the agent's timeline: wall-clock time as it was
/// at start, advanced by the boot clock. Everything that measures time
/// between events (windows, learning, quarantines, losses) uses this
/// timeline, so a step of the wall clock (NTP, an operator's `date -s`)
/// cannot expire windows or end learning; [`BootClock::wall_drift_ns`]
/// tells how far the wall clock has moved away from it.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    /// Wall-clock ns at boot-time 0, measured at start.
    offset_ns: i128,
}

impl BootClock {
    /// Measures the offset now.
    pub fn new() -> Self {
        Self::measured(boottime_ns(), Timestamp::now().0)
    }

    /// The clock of a wall-clock reading `wall_ns` taken at boot time
    /// `boot_ns`.
    pub fn measured(boot_ns: u64, wall_ns: u64) -> Self {
        Self {
            offset_ns: i128::from(wall_ns) - i128::from(boot_ns),
        }
    }

    /// Timeline time of a boot-time instant.
    pub fn to_wall(&self, boot_ns: u64) -> Timestamp {
        Timestamp((self.offset_ns + i128::from(boot_ns)).max(0) as u64)
    }

    /// How far the wall clock (read as `wall_ns` at boot time `boot_ns`) is
    /// ahead of the timeline (negative: behind).
    pub fn wall_drift_ns(&self, boot_ns: u64, wall_ns: u64) -> i128 {
        i128::from(wall_ns) - (self.offset_ns + i128::from(boot_ns))
    }
}

/// How far the wall clock is from the timeline (ns), as the capture last
/// measured it (every second): what leaves the agent is stamped in wall-clock
/// time as the wall clock reads now, so after a step of the clock (an NTP
/// sync at boot, an operator's `date -s`) a SIEM gets the right times, while
/// windows and learning keep measuring on the timeline.
static WALL_CORRECTION_NS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Records the wall clock's distance from the timeline.
pub fn set_wall_correction(ns: i128) {
    let ns = ns.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    WALL_CORRECTION_NS.store(ns, std::sync::atomic::Ordering::Relaxed);
}

impl Timestamp {
    /// This timeline instant in wall-clock time as the wall clock reads now
    /// (see [`set_wall_correction`]).
    pub fn on_wall_clock(self) -> Timestamp {
        let correction = WALL_CORRECTION_NS.load(std::sync::atomic::Ordering::Relaxed);
        Timestamp((i128::from(self.0) + i128::from(correction)).max(0) as u64)
    }
}

impl Default for BootClock {
    fn default() -> Self {
        Self::new()
    }
}

/// `CLOCK_BOOTTIME` now, in ns.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_clock_step_moves_no_event_on_the_timeline_and_is_measured() {
        const S: u64 = 1_000_000_000;
        let start_wall = 1_800_000_000 * S;
        let clock = BootClock::measured(100 * S, start_wall);
        // 10 s of boot time later the operator steps the wall clock an hour
        // ahead: events keep their 10 s spacing from the start.
        let before = clock.to_wall(105 * S);
        let after = clock.to_wall(110 * S);
        assert_eq!(after.since(before), Duration::from_secs(5));
        assert_eq!(after, Timestamp(start_wall + 10 * S));
        let stepped_wall = start_wall + 10 * S + 3600 * S;
        assert_eq!(
            clock.wall_drift_ns(110 * S, stepped_wall),
            i128::from(3600 * S)
        );
        // And back, an hour behind.
        let behind = start_wall + 20 * S - 3600 * S;
        assert_eq!(clock.wall_drift_ns(120 * S, behind), -i128::from(3600 * S));
        assert_eq!(clock.wall_drift_ns(120 * S, start_wall + 20 * S), 0);
        // What leaves the agent follows the step; the timeline does not.
        set_wall_correction(clock.wall_drift_ns(110 * S, stepped_wall));
        assert_eq!(after.on_wall_clock(), Timestamp(stepped_wall));
        assert_eq!(clock.to_wall(110 * S), after);
        set_wall_correction(0);
        assert_eq!(after.on_wall_clock(), after);
    }

    #[test]
    fn rfc3339_round_trip_keeps_nanoseconds() {
        let t = Timestamp(1_790_000_000_123_456_789);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-09-21T14:13:20.123456789Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }

    #[test]
    fn hand_formatting_matches_humantime() {
        let edges = [
            0,
            1,
            951_782_400_000_000_000, // 2000-02-29: a 400th year has a leap day
            4_107_542_399_999_999_999, // 2100-02-28T23:59:59.999999999: a 100th has none
            4_107_542_400_000_000_000, // 2100-03-01
            u64::MAX,
        ];
        // Edges, then a spread over the whole range (a fixed LCG).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let spread = (0..20_000).map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            x
        });
        for ns in edges.into_iter().chain(spread) {
            let t = Timestamp(ns);
            let expected = humantime::format_rfc3339_nanos(SystemTime::from(t)).to_string();
            assert_eq!(t.to_string(), expected, "{ns} ns");
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{expected}\"")
            );
        }
    }

    #[test]
    fn bad_timestamp_is_named() {
        let err = serde_json::from_str::<Timestamp>("\"yesterday\"").unwrap_err();
        assert!(err.to_string().contains("yesterday"), "{err}");
    }

    #[test]
    fn boot_clock_maps_now_to_now() {
        let clock = BootClock::new();
        let wall = clock.to_wall(boottime_ns());
        assert!(Timestamp::now().since(wall) < Duration::from_secs(1));
    }
}
