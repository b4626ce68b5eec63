//! Temperatures the kernel exposes (thermal zones and hwmon sensors) and the Raspberry Pi firmware's
//! throttling flags, from a `/sys` root (the real one, or a fake tree in tests).

use std::path::{Path, PathBuf};

use burrow_core::api::Temperature;

/// Sensors reported at most; beats stay small.
const MAX_SENSORS: usize = 32;
/// Readings outside this range (°C) are a sensor's way of saying "no value" (-273, 0x7fff…).
const PLAUSIBLE: std::ops::RangeInclusive<f32> = -60.0..=200.0;
/// Where the Pi firmware driver publishes `get_throttled` (hex bit flags).
const THROTTLED: &str = "devices/platform/soc/soc:firmware/get_throttled";

/// Every thermal zone (`class/thermal/thermal_zone*`: `type`, `temp` in m°C), then every hwmon
/// sensor (`class/hwmon/hwmon*`: `name`, `temp*_input`, `temp*_label`) that is not the thermal
/// zones' own hwmon copy.
pub fn temperatures(sys: &Path) -> Vec<Temperature> {
    let mut found = Vec::new();
    let mut zone_types = Vec::new();
    for zone in numbered(&sys.join("class/thermal"), "thermal_zone") {
        let Some(kind) = read_trimmed(&zone.join("type")) else {
            continue;
        };
        // The thermal core registers a hwmon device per zone type, with `-` made `_`.
        zone_types.push(kind.replace('-', "_"));
        if let Some(celsius) = millidegrees(&zone.join("temp")) {
            found.push(Temperature {
                sensor: kind,
                celsius,
            });
        }
    }
    for hwmon in numbered(&sys.join("class/hwmon"), "hwmon") {
        let name = read_trimmed(&hwmon.join("name")).unwrap_or_else(|| file_name(&hwmon));
        if zone_types.contains(&name) {
            continue;
        }
        let mut inputs: Vec<(u32, PathBuf)> = std::fs::read_dir(&hwmon)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let file = e.file_name().into_string().ok()?;
                let n = file.strip_prefix("temp")?.strip_suffix("_input")?;
                Some((n.parse().ok()?, e.path()))
            })
            .collect();
        inputs.sort();
        for (n, input) in inputs {
            let Some(celsius) = millidegrees(&input) else {
                continue;
            };
            let label = read_trimmed(&hwmon.join(format!("temp{n}_label")))
                .unwrap_or_else(|| format!("temp{n}"));
            found.push(Temperature {
                sensor: format!("{name}/{label}"),
                celsius,
            });
        }
    }
    found.truncate(MAX_SENSORS);
    found
}

/// The Pi firmware's throttling flags (`get_throttled`, hex), where the file exists.
pub fn throttled(sys: &Path) -> Option<u32> {
    let text = read_trimmed(&sys.join(THROTTLED))?;
    let hex = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(&text);
    u32::from_str_radix(hex, 16).ok()
}

/// `dir/<prefix>N` entries, by N.
fn numbered(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut entries: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n = e.file_name().to_str()?.strip_prefix(prefix)?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    entries.sort();
    entries.into_iter().map(|(_, path)| path).collect()
}

fn millidegrees(path: &Path) -> Option<f32> {
    let milli: i64 = read_trimmed(path)?.parse().ok()?;
    let celsius = milli as f32 / 1000.0;
    PLAUSIBLE.contains(&celsius).then_some(celsius)
}

/// The file's text without surrounding whitespace; `None` when unreadable or empty (a sensor that is
/// off answers reads with an error).
fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
