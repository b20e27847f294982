//! Writing DSMR 5 telegrams, for the simulator, the tests and the benchmarks.

#[allow(unused_imports)]
use super::*;

/// Writes a DSMR 5.0.2 telegram (CRLF lines, CRC) for the simulator, tests and benchmarks:
/// the electricity registers given (each at most once; gas entries are ignored), gas on
/// channel 1 when given, and the lines a real meter adds around them (power, failures log,
/// voltage, current), which decoders skip. Times carry the `S`/`W` flag of their
/// Europe/Amsterdam offset; DSMR writes two-digit years, so times must lie in 2000–2099.
pub fn encode_dsmr5(
    meter: &MeterId,
    time: Timestamp,
    electricity: &[(Register, u64)],
    gas: Option<(Timestamp, u64)>,
) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str("/MST5\\2SIM-P1-1000\r\n\r\n1-3:0.2.8(50)\r\n");
    let _ = write!(out, "0-0:1.0.0({})\r\n0-0:96.1.1(", flagged_stamp(time));
    for b in meter.as_bytes() {
        let _ = write!(out, "{b:02X}");
    }
    out.push_str(")\r\n");
    for &(register, value) in electricity {
        if register != Register::Gas {
            let _ = write!(
                out,
                "{}({:06}.{:03}*kWh)\r\n",
                register.obis(),
                value / 1000,
                value % 1000
            );
        }
    }
    out.push_str(concat!(
        "0-0:96.14.0(0001)\r\n",
        "1-0:1.7.0(00.412*kW)\r\n",
        "1-0:2.7.0(00.000*kW)\r\n",
        "0-0:96.7.21(00004)\r\n",
        "0-0:96.7.9(00002)\r\n",
        "1-0:99.97.0(2)(0-0:96.7.19)(181012093010S)(0000000240*s)",
        "(190214151004W)(0000000301*s)\r\n",
        "1-0:32.32.0(00001)\r\n",
        "1-0:32.36.0(00000)\r\n",
        "0-0:96.13.0()\r\n",
        "1-0:32.7.0(229.8*V)\r\n",
        "1-0:31.7.0(002*A)\r\n",
        "1-0:21.7.0(00.412*kW)\r\n",
        "1-0:22.7.0(00.000*kW)\r\n",
    ));
    if let Some((at, value)) = gas {
        let _ = write!(
            out,
            "0-1:24.1.0(003)\r\n0-1:24.2.1({})({:05}.{:03}*m3)\r\n",
            flagged_stamp(at),
            value / 1000,
            value % 1000
        );
    }
    out.push('!');
    let crc = crc16(out.as_bytes());
    let _ = write!(out, "{crc:04X}\r\n");
    out
}

/// `YYMMDDhhmmssX` for `t`: `S` with UTC+2 when Europe/Amsterdam keeps summer time at
/// `t`, else `W` with UTC+1, so `flagged_time` gives `t` back exactly.
fn flagged_stamp(t: Timestamp) -> String {
    // Looked up once: the simulator encodes thousands of telegrams a second.
    static AMSTERDAM: LazyLock<TimeZone> =
        LazyLock::new(|| Calendar::amsterdam().time_zone().clone());
    let summer = AMSTERDAM.to_offset(t) == Offset::constant(2);
    let (offset, flag) = if summer {
        (Offset::constant(2), 'S')
    } else {
        (Offset::constant(1), 'W')
    };
    let dt = offset.to_datetime(t);
    format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}{flag}",
        dt.year().rem_euclid(100),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}
