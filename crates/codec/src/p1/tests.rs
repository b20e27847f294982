//! Telegrams written by hand after the published DSMR 2.2, 4.2 and 5.0.2 P1 companion
//! standards and the Fluvius e-MUCS P1 specification. CRCs are computed with `crc16`, which
//! is pinned by a known answer and by one telegram whose CRC was computed elsewhere.

use jiff::{SignedDuration, Timestamp};
use meterstand_model::{Calendar, MeterId, Register, Tier};
use proptest::prelude::*;

use super::*;
use crate::{Format, parse_topic};

const METER: &str = "E0031003262764316";
const METER_HEX: &str = "4530303331303033323632373634333136";

fn ts(s: &str) -> Timestamp {
    s.parse().expect("valid timestamp")
}

fn cal() -> Calendar {
    Calendar::amsterdam()
}

fn now() -> Timestamp {
    ts("2026-11-27T12:00:00Z")
}

fn limits() -> Limits {
    Limits::default()
}

fn decode_bytes(payload: &[u8]) -> Result<Telegram, Reject> {
    decode_telegram(payload, &cal(), &limits())
}

/// Joins lines with CRLF up to the `!` and, when `crc`, appends the CRC.
fn telegram(lines: &[&str], crc: bool) -> String {
    let mut text = lines.join("\r\n");
    text.push_str("\r\n!");
    if crc {
        text.push_str(&format!("{:04X}", crc16(text.as_bytes())));
    }
    text.push_str("\r\n");
    text
}

/// DSMR 5.0.2, three-phase with gas; CRC 1EC0 computed by an independent implementation.
const DSMR5: &str = "/ISK5\\2M550T-1012\r\n\r\n1-3:0.2.8(50)\r\n0-0:1.0.0(261127001504W)\r\n\
0-0:96.1.1(4530303331303033323632373634333136)\r\n1-0:1.8.1(012345.678*kWh)\r\n\
1-0:1.8.2(009876.543*kWh)\r\n1-0:2.8.1(000123.004*kWh)\r\n1-0:2.8.2(000456.700*kWh)\r\n\
0-0:96.14.0(0002)\r\n1-0:1.7.0(01.193*kW)\r\n1-0:2.7.0(00.000*kW)\r\n0-0:96.7.21(00004)\r\n\
0-0:96.7.9(00002)\r\n\
1-0:99.97.0(2)(0-0:96.7.19)(261012093010S)(0000000240*s)(261114151004W)(0000000301*s)\r\n\
1-0:32.32.0(00002)\r\n1-0:52.32.0(00001)\r\n1-0:72.32.0(00000)\r\n1-0:32.36.0(00000)\r\n\
1-0:52.36.0(00003)\r\n1-0:72.36.0(00000)\r\n0-0:96.13.0(303132333435363738393A3B3C3D3E3F)\r\n\
1-0:32.7.0(220.1*V)\r\n1-0:52.7.0(220.2*V)\r\n1-0:72.7.0(220.3*V)\r\n1-0:31.7.0(001*A)\r\n\
1-0:51.7.0(002*A)\r\n1-0:71.7.0(003*A)\r\n1-0:21.7.0(01.111*kW)\r\n1-0:41.7.0(02.222*kW)\r\n\
1-0:61.7.0(03.333*kW)\r\n1-0:22.7.0(04.444*kW)\r\n1-0:42.7.0(05.555*kW)\r\n\
1-0:62.7.0(06.666*kW)\r\n0-1:24.1.0(003)\r\n0-1:96.1.0(4730303332313235343330303937363534)\r\n\
0-1:24.2.1(261127000000W)(04321.500*m3)\r\n!1EC0\r\n";

fn dsmr42() -> String {
    telegram(
        &[
            "/KFM5KAIFA-METER",
            "",
            "1-3:0.2.8(42)",
            "0-0:1.0.0(260714000005S)",
            "0-0:96.1.1(4530303236303030303234313533363135)",
            "1-0:1.8.1(001581.123*kWh)",
            "1-0:1.8.2(001435.706*kWh)",
            "1-0:2.8.1(000000.000*kWh)",
            "1-0:2.8.2(000000.000*kWh)",
            "0-0:96.14.0(0002)",
            "1-0:1.7.0(02.027*kW)",
            "1-0:2.7.0(00.000*kW)",
            "0-0:96.7.21(00015)",
            "0-0:96.7.9(00007)",
            "1-0:99.97.0(3)(0-0:96.7.19)(250104180320W)(0000237126*s)(250301000001W)(0000003646*s)(260102000003W)(0000012647*s)",
            "1-0:32.32.0(00000)",
            "1-0:32.36.0(00000)",
            "0-0:96.13.1()",
            "0-0:96.13.0()",
            "1-0:31.7.0(009*A)",
            "1-0:21.7.0(02.027*kW)",
            "1-0:22.7.0(00.000*kW)",
            "0-1:24.1.0(003)",
            "0-1:96.1.0(4730303332313235343330303937363534)",
            "0-1:24.2.1(260713230000S)(00981.443*m3)",
        ],
        true,
    )
}

fn dsmr22(gas_time: &str) -> String {
    telegram(
        &[
            "/ISk5\\2MT382-1004",
            "",
            "0-0:96.1.1(4B414C37303035313135383331373132)",
            "1-0:1.8.1(00185.000*kWh)",
            "1-0:1.8.2(00084.000*kWh)",
            "1-0:2.8.1(00013.000*kWh)",
            "1-0:2.8.2(00019.000*kWh)",
            "0-0:96.14.0(0001)",
            "1-0:1.7.0(0000.98*kW)",
            "1-0:2.7.0(0000.00*kW)",
            "0-0:17.0.0(999*A)",
            "0-0:96.3.10(1)",
            "0-0:96.13.1()",
            "0-0:96.13.0()",
            "0-1:24.1.0(3)",
            "0-1:96.1.0(3232323241424344313233343536373839)",
            &format!("0-1:24.3.0({gas_time})(00)(60)(1)(0-1:24.2.1)(m3)"),
            "(00001.001)",
            "0-1:24.4.0(1)",
        ],
        false,
    )
}

fn fluvius(gas_time: &str) -> String {
    telegram(
        &[
            "/FLU5\\253769484_A",
            "",
            "0-0:96.1.4(50217)",
            "0-0:96.1.1(3153414731313030303432313831)",
            "0-0:1.0.0(260501134509S)",
            "1-0:1.8.1(000123.456*kWh)",
            "1-0:1.8.2(000234.567*kWh)",
            "1-0:2.8.1(000010.001*kWh)",
            "1-0:2.8.2(000020.002*kWh)",
            "0-0:96.14.0(0001)",
            "1-0:1.4.0(02.351*kW)",
            "1-0:1.6.0(260409134558S)(02.589*kW)",
            "0-0:98.1.0(2)(1-0:1.6.0)(1-0:1.6.0)(260301000000W)(260223192538W)(03.695*kW)(260401000000S)(260305122139W)(05.980*kW)",
            "1-0:1.7.0(00.000*kW)",
            "1-0:2.7.0(00.000*kW)",
            "1-0:21.7.0(00.000*kW)",
            "1-0:22.7.0(00.000*kW)",
            "1-0:32.7.0(234.7*V)",
            "1-0:31.7.0(000.00*A)",
            "0-0:96.3.10(1)",
            "0-0:17.0.0(999.9*kW)",
            "1-0:31.4.0(999*A)",
            "0-0:96.13.0()",
            "0-1:24.1.0(003)",
            "0-1:96.1.1(37464C4F32313139303137303532)",
            "0-1:24.4.0(1)",
            &format!("0-1:24.2.3({gas_time})(00112.384*m3)"),
        ],
        true,
    )
}

/// A minimal DSMR 5 telegram around `lines` (time, meter id and one register first).
fn dsmr5_with(time: &str, lines: &[&str]) -> String {
    let stamp = format!("0-0:1.0.0({time})");
    let id = format!("0-0:96.1.1({METER_HEX})");
    let mut all = vec!["/ISK5\\2M550T-1012", "", "1-3:0.2.8(50)", &stamp, &id];
    all.extend_from_slice(lines);
    telegram(&all, true)
}

#[test]
fn crc16_known_answers() {
    assert_eq!(crc16(b"123456789"), 0xBB3D);
    assert_eq!(crc16(b""), 0);
    // The literal telegram's CRC was computed outside this crate.
    let bang = DSMR5.find('!').expect("has !");
    assert_eq!(crc16(&DSMR5.as_bytes()[..=bang]), 0x1EC0);
}

#[test]
fn dsmr5_telegram() {
    let t = decode_bytes(DSMR5.as_bytes()).expect("valid");
    assert_eq!(t.version, Version::Dsmr5);
    assert_eq!(t.time, Some(ts("2026-11-26T23:15:04Z")));
    assert_eq!(t.meter.expose(), METER);
    assert_eq!(
        t.electricity,
        vec![
            (Register::ImportT1, 12_345_678),
            (Register::ImportT2, 9_876_543),
            (Register::ExportT1, 123_004),
            (Register::ExportT2, 456_700),
        ]
    );
    assert_eq!(t.gas, Some((ts("2026-11-26T23:00:00Z"), 4_321_500)));
    // The same telegram with LF line ends (and its CRC over those bytes).
    let lf = DSMR5.replace("\r\n", "\n");
    let bang = lf.find('!').expect("has !");
    let lf = format!("{}{:04X}\n", &lf[..=bang], crc16(&lf.as_bytes()[..=bang]));
    let t2 = decode_bytes(lf.as_bytes()).expect("LF is accepted");
    assert_eq!(t2, t);
    // Without trailing line end.
    assert!(decode_bytes(DSMR5.trim_end().as_bytes()).is_ok());
}

#[test]
fn dsmr42_telegram() {
    let t = decode_bytes(dsmr42().as_bytes()).expect("valid");
    assert_eq!(t.version, Version::Dsmr4);
    assert_eq!(t.time, Some(ts("2026-07-13T22:00:05Z")));
    assert_eq!(t.meter.expose(), "E0026000024153615");
    assert_eq!(t.electricity[0], (Register::ImportT1, 1_581_123));
    assert_eq!(t.electricity[3], (Register::ExportT2, 0));
    assert_eq!(t.gas, Some((ts("2026-07-13T21:00:00Z"), 981_443)));
    // Local midnight of 14 July (summer time): interval and day readings at 22:00Z.
    let placed = place(
        t,
        ts("2026-07-14T00:00:00Z"),
        &cal(),
        DEFAULT_BOUNDARY_WINDOW,
        &limits(),
    )
    .expect("placed");
    assert_eq!(
        placed.electricity,
        Placement::Boundary(ts("2026-07-13T22:00:00Z"))
    );
    assert_eq!(placed.decoded.readings.len(), 5);
    let day = &placed.decoded.readings[0];
    assert!(day.tiers.contains(Tier::Day) && day.tiers.contains(Tier::Interval));
    assert!(!day.tiers.contains(Tier::Month));
    let gas = &placed.decoded.readings[4];
    assert_eq!(gas.reading.register, Register::Gas);
    assert!(gas.tiers.contains(Tier::Interval) && !gas.tiers.contains(Tier::Day));
}

#[test]
fn dsmr22_telegram() {
    let t = decode_bytes(dsmr22("261126160000").as_bytes()).expect("valid");
    assert_eq!(t.version, Version::Dsmr2);
    assert_eq!(t.time, None);
    assert_eq!(t.meter.expose(), "KAL7005115831712");
    assert_eq!(t.electricity.len(), 4);
    assert_eq!(t.electricity[1], (Register::ImportT2, 84_000));
    // Flagless local time, resolved in the calendar: 16:00 winter time is 15:00Z.
    assert_eq!(t.gas, Some((ts("2026-11-26T15:00:00Z"), 1_001)));
    let placed = place(t, now(), &cal(), DEFAULT_BOUNDARY_WINDOW, &limits()).expect("placed");
    assert_eq!(placed.electricity, Placement::Untimed);
    assert!(!placed.between_boundaries());
    assert_eq!(placed.decoded.readings.len(), 1);
    assert_eq!(placed.decoded.readings[0].reading.register, Register::Gas);

    // The repeated hour of the DST night and the skipped one are refused, not guessed.
    assert_eq!(
        decode_bytes(dsmr22("261025023000").as_bytes()),
        Err(Reject::BadTime)
    );
    assert_eq!(
        decode_bytes(dsmr22("260329023000").as_bytes()),
        Err(Reject::BadTime)
    );
    // Either side of the repeated hour is fine.
    assert!(decode_bytes(dsmr22("261025013000").as_bytes()).is_ok());
    assert!(decode_bytes(dsmr22("261025033000").as_bytes()).is_ok());
    // The value line may repeat its unit; another unit is refused.
    let with_unit = dsmr22("261126160000").replace("(00001.001)", "(00001.001*m3)");
    let t = decode_bytes(with_unit.as_bytes()).expect("valid");
    assert_eq!(t.gas, Some((ts("2026-11-26T15:00:00Z"), 1_001)));
    let wrong = dsmr22("261126160000").replace("(00001.001)", "(00001.001*GJ)");
    assert_eq!(decode_bytes(wrong.as_bytes()), Err(Reject::WrongUnit));
    // A missing value line after the two-line gas object.
    let cut = dsmr22("261126160000").replace("(00001.001)\r\n", "");
    assert_eq!(decode_bytes(cut.as_bytes()), Err(Reject::BadTelegram));
}

#[test]
fn fluvius_telegram() {
    let t = decode_bytes(fluvius("260501134500S").as_bytes()).expect("valid");
    assert_eq!(t.version, Version::Emucs);
    assert_eq!(t.time, Some(ts("2026-05-01T11:45:09Z")));
    // The gas meter's own id (0-1:96.1.1) is not the electricity meter's.
    assert_eq!(t.meter.expose(), "1SAG1100042181");
    assert_eq!(t.electricity[2], (Register::ExportT1, 10_001));
    assert_eq!(t.gas, Some((ts("2026-05-01T11:45:00Z"), 112_384)));
    let placed = place(t, now(), &cal(), DEFAULT_BOUNDARY_WINDOW, &limits()).expect("placed");
    assert_eq!(
        placed.electricity,
        Placement::Boundary(ts("2026-05-01T11:45:00Z"))
    );
    // A 5-minute gas capture is not an hourly boundary: electricity only.
    assert_eq!(placed.decoded.readings.len(), 4);

    let t = decode_bytes(fluvius("260501130000S").as_bytes()).expect("valid");
    let placed = place(t, now(), &cal(), DEFAULT_BOUNDARY_WINDOW, &limits()).expect("placed");
    assert_eq!(placed.decoded.readings.len(), 5);
    assert_eq!(
        placed.decoded.readings[4].reading.time,
        ts("2026-05-01T11:00:00Z")
    );
}

#[test]
fn dst_night_flags_name_two_instants() {
    let reg = "1-0:1.8.1(000001.000*kWh)";
    let summer = decode_bytes(dsmr5_with("261025023000S", &[reg]).as_bytes()).expect("valid");
    let winter = decode_bytes(dsmr5_with("261025023000W", &[reg]).as_bytes()).expect("valid");
    assert_eq!(summer.time, Some(ts("2026-10-25T00:30:00Z")));
    assert_eq!(winter.time, Some(ts("2026-10-25T01:30:00Z")));
    // Both are quarter-hour readings of their own instant.
    for t in [summer, winter] {
        let time = t.time;
        let placed = place(t, now(), &cal(), DEFAULT_BOUNDARY_WINDOW, &limits()).expect("placed");
        assert_eq!(
            placed.electricity,
            Placement::Boundary(time.expect("timed"))
        );
    }
    // The encoder writes the flag from the Europe/Amsterdam offset.
    let id: MeterId = METER.parse().expect("valid");
    for at in [
        "2026-10-25T00:30:00Z",
        "2026-10-25T01:30:00Z",
        "2026-03-29T01:00:00Z",
    ] {
        let text = encode_dsmr5(&id, ts(at), &[(Register::ImportT1, 1)], None);
        let t = decode_bytes(text.as_bytes()).expect("valid");
        assert_eq!(t.time, Some(ts(at)));
    }
    let text = encode_dsmr5(&id, ts("2026-10-25T00:30:00Z"), &[], None);
    assert!(text.contains("(261025023000S)"));
    let text = encode_dsmr5(&id, ts("2026-10-25T01:30:00Z"), &[], None);
    assert!(text.contains("(261025023000W)"));
    // No flag, or another letter, is not a time.
    let reg = [reg];
    for bad in [
        "261025023000",
        "261025023000X",
        "261325023000W",
        "261025026100W",
    ] {
        assert_eq!(
            decode_bytes(dsmr5_with(bad, &reg).as_bytes()),
            Err(Reject::BadTime),
            "{bad}"
        );
    }
}

#[test]
fn boundary_window() {
    let window = DEFAULT_BOUNDARY_WINDOW;
    let placed = |local: &str, gas: Option<&str>| {
        let gas = gas.map(|g| format!("0-1:24.2.1({g})(01234.567*m3)"));
        let mut lines = vec!["1-0:1.8.1(000100.000*kWh)", "1-0:2.8.1(000002.500*kWh)"];
        if let Some(g) = &gas {
            lines.push(g);
        }
        let t = decode_bytes(dsmr5_with(local, &lines).as_bytes()).expect("valid");
        place(t, now(), &cal(), window, &limits()).expect("placed")
    };
    // 23:15:04Z (00:15:04 winter time): the 23:15:00Z readings.
    let p = placed("261127001504W", None);
    assert_eq!(
        p.electricity,
        Placement::Boundary(ts("2026-11-26T23:15:00Z"))
    );
    assert_eq!(p.decoded.readings.len(), 2);
    assert!(
        p.decoded
            .readings
            .iter()
            .all(|r| r.reading.time == ts("2026-11-26T23:15:00Z")
                && r.tiers.contains(Tier::Interval))
    );
    assert_eq!(p.decoded.readings[1].reading.value, 2_500);
    // The window's last second, and the first one past it.
    assert!(!placed("261127001509W", None).between_boundaries());
    assert!(placed("261127001510W", None).between_boundaries());
    // 23:15:30Z: between boundaries, nothing.
    let p = placed("261127001530W", None);
    assert!(p.between_boundaries());
    assert!(p.decoded.readings.is_empty());
    // Gas captured at 23:00:00Z (local midnight) is stored, even between electricity windows.
    let p = placed("261127001530W", Some("261127000000W"));
    assert!(p.between_boundaries());
    assert_eq!(p.decoded.readings.len(), 1);
    let gas = p.decoded.readings[0];
    assert_eq!(gas.reading.register, Register::Gas);
    assert_eq!(gas.reading.time, ts("2026-11-26T23:00:00Z"));
    assert_eq!(gas.reading.value, 1_234_567);
    assert!(gas.tiers.contains(Tier::Day) && gas.tiers.contains(Tier::Interval));
    // Gas at 23:05 is not on a gas boundary: dropped.
    let p = placed("261127001504W", Some("261127000500W"));
    assert_eq!(p.decoded.readings.len(), 2);
    // A zero window keeps only telegrams captured exactly on a boundary.
    let t = decode_bytes(dsmr5_with("261127001500W", &["1-0:1.8.1(000100.000*kWh)"]).as_bytes())
        .expect("valid");
    let p = place(t, now(), &cal(), SignedDuration::ZERO, &limits()).expect("placed");
    assert!(p.between_boundaries());
    // A capture time beyond now + max_future rejects the telegram.
    let t = decode_bytes(dsmr5_with("261201001500W", &["1-0:1.8.1(000100.000*kWh)"]).as_bytes())
        .expect("valid");
    assert_eq!(
        place(t, now(), &cal(), window, &limits()),
        Err(Reject::FutureTime)
    );
}

#[test]
fn through_the_generic_decode() {
    let d = crate::decode(Format::P1, DSMR5.as_bytes(), now(), &cal(), &limits()).expect("valid");
    assert_eq!(d.meter.expose(), METER);
    assert_eq!(d.readings.len(), 5);
    assert_eq!(
        crate::decode(Format::P1, b"{}", now(), &cal(), &limits()),
        Err(Reject::BadTelegram)
    );
    let ean = meterstand_model::Ean::from_body(87_100_000_000_000_001).expect("fits");
    assert_eq!(
        parse_topic("meters", &format!("meters/{}/p1", ean.expose())),
        Ok((ean, Format::P1))
    );
    assert_eq!(Format::P1.as_str(), "p1");
}

#[test]
fn one_changed_byte_fails_the_crc() {
    let bytes = DSMR5.as_bytes();
    let bang = DSMR5.find('!').expect("has !");
    let end = bang + 5;
    for i in 1..end {
        if i == bang || bytes[i] == b'\n' {
            // Without its `!` or a line break before it the telegram has no end: framing.
            continue;
        }
        let mut changed = bytes.to_vec();
        changed[i] ^= 0x01;
        assert_eq!(decode_bytes(&changed), Err(Reject::CrcMismatch), "byte {i}");
    }
    // A register typo with the CRC left as it was.
    let typo = DSMR5.replace("012345.678", "012345.679");
    assert_eq!(decode_bytes(typo.as_bytes()), Err(Reject::CrcMismatch));
    // A version that has a CRC, without one.
    let no_crc = DSMR5.replace("!1EC0", "!");
    assert_eq!(decode_bytes(no_crc.as_bytes()), Err(Reject::CrcMismatch));
    // A malformed CRC field.
    let bad = DSMR5.replace("!1EC0", "!1EC");
    assert_eq!(decode_bytes(bad.as_bytes()), Err(Reject::CrcMismatch));
    // Lowercase hex digits are the same CRC.
    let lower = DSMR5.replace("!1EC0", "!1ec0");
    assert!(decode_bytes(lower.as_bytes()).is_ok());
}

#[test]
fn truncated_telegrams_are_rejects() {
    let bytes = DSMR5.as_bytes();
    let bang = DSMR5.find('!').expect("has !");
    for len in 0..bang + 5 {
        assert!(decode_bytes(&bytes[..len]).is_err(), "prefix {len}");
    }
    assert_eq!(decode_bytes(&bytes[..bang]), Err(Reject::BadTelegram));
    assert_eq!(decode_bytes(b""), Err(Reject::BadTelegram));
    // A DSMR 2.2 telegram cut before its `!`.
    let t = dsmr22("261126160000");
    let cut = &t[..t.find('!').expect("has !")];
    assert_eq!(decode_bytes(cut.as_bytes()), Err(Reject::BadTelegram));
}

#[test]
fn duplicated_lines_are_rejects() {
    let reg = "1-0:1.8.1(000100.000*kWh)";
    for dup in [
        reg,
        "0-0:1.0.0(261127001504W)",
        &format!("0-0:96.1.1({METER_HEX})"),
        "1-3:0.2.8(50)",
        "0-1:24.2.1(261127000000W)(00001.000*m3)",
    ] {
        let mut lines = vec![reg, dup];
        if dup.starts_with("0-1") {
            lines.push(dup);
        }
        assert_eq!(
            decode_bytes(dsmr5_with("261127001504W", &lines).as_bytes()),
            Err(Reject::BadTelegram),
            "{dup}"
        );
    }
    // A whole second telegram after the first.
    let twice = format!("{DSMR5}{DSMR5}");
    assert_eq!(decode_bytes(twice.as_bytes()), Err(Reject::BadTelegram));
}

#[test]
fn garbage_is_rejected_without_panic() {
    let big = Limits {
        max_payload_bytes: 1 << 20,
        ..Limits::default()
    };
    // 100 kB of pseudo-random bytes, with and without a leading slash.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut garbage: Vec<u8> = (0..100_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    assert_eq!(decode_bytes(&garbage), Err(Reject::Oversize));
    assert!(decode_telegram(&garbage, &cal(), &big).is_err());
    garbage[0] = b'/';
    assert_eq!(
        decode_telegram(&garbage, &cal(), &big),
        Err(Reject::BadTelegram)
    );
    // One endless line; then endless short lines.
    let mut long = b"/ISK5\\2M550T-1012\r\n1-0:1.8.1(".to_vec();
    long.resize(100_000, b'7');
    assert_eq!(
        decode_telegram(&long, &cal(), &big),
        Err(Reject::BadTelegram)
    );
    let many = format!(
        "/ISK5\\2M550T-1012\r\n{}",
        "1-0:1.7.0(00.100*kW)\r\n".repeat(4000)
    );
    assert_eq!(
        decode_telegram(many.as_bytes(), &cal(), &big),
        Err(Reject::BadTelegram)
    );
    // A line one byte over the bound, inside an otherwise valid telegram.
    let message = |len: usize| format!("0-0:96.13.0({})", "A".repeat(len - 13));
    let (at, over) = (message(MAX_LINE_BYTES), message(MAX_LINE_BYTES + 1));
    assert_eq!(over.len(), MAX_LINE_BYTES + 1);
    let reg = "1-0:1.8.1(000100.000*kWh)";
    let over = dsmr5_with("261127001504W", &[reg, &over]);
    assert_eq!(decode_bytes(over.as_bytes()), Err(Reject::BadTelegram));
    let at = dsmr5_with("261127001504W", &[reg, &at]);
    assert!(decode_bytes(at.as_bytes()).is_ok());
    // The same line with LF only, for a line end that has no CR to strip.
    let lf = at.replace("\r\n", "\n");
    let bang = lf.find('!').expect("has !");
    let lf = format!("{}{:04X}", &lf[..=bang], crc16(&lf.as_bytes()[..=bang]));
    assert!(decode_bytes(lf.as_bytes()).is_ok());
}

#[test]
fn unknown_lines_are_skipped_without_trusting_counts() {
    let t = dsmr5_with(
        "261127001504W",
        &[
            "1-0:99.97.0(4294967295)(0-0:96.7.19)(261012093010S)",
            "0-0:98.1.0(99999)(1-0:1.6.0)(((nested)))",
            "1-0:1.8.1(000100.000*kWh)",
            "(orphan value line)",
            "no value here",
            "9-9:9.9.9(\u{00ff}\u{00fe})",
            "0-2:24.1.0(007)",
            "0-2:24.2.1(261127000000W)(00077.000*m3)",
            "0-3:24.2.1(261127000000W)(00001.000*GJ)",
        ],
    );
    let t = decode_bytes(t.as_bytes()).expect("valid");
    assert_eq!(t.electricity, vec![(Register::ImportT1, 100_000)]);
    // The water meter (device type 7) and the heat meter (GJ) are not gas.
    assert_eq!(t.gas, None);
    // Two gas meters: which one is billed cannot be told.
    let two = dsmr5_with(
        "261127001504W",
        &[
            "1-0:1.8.1(000100.000*kWh)",
            "0-1:24.2.1(261127000000W)(00001.000*m3)",
            "0-2:24.1.0(003)",
            "0-2:24.2.1(261127000000W)(00002.000*m3)",
        ],
    );
    assert_eq!(decode_bytes(two.as_bytes()), Err(Reject::BadTelegram));
}

#[test]
fn field_rejects() {
    let t = "261127001504W";
    let reg = "1-0:1.8.1(000100.000*kWh)";
    let cases: Vec<(Vec<&str>, Reject)> = vec![
        (vec!["1-0:1.8.1(000100.000*Wh)"], Reject::WrongUnit),
        (vec!["1-0:1.8.1(000100.000)"], Reject::WrongUnit),
        (vec!["1-0:1.8.1(000100.0001*kWh)"], Reject::BadValue),
        (vec!["1-0:1.8.1(-00100.000*kWh)"], Reject::NegativeValue),
        (vec!["1-0:1.8.1(999999999.000*kWh)"], Reject::AbsurdValue),
        (vec!["1-0:1.8.1(000100.000*kWh)(1)"], Reject::BadTelegram),
        (vec![reg, "1-3:0.2.8(30)"], Reject::BadTelegram),
        (
            vec![reg, "0-1:24.2.1(261127000000W)(00001.000*m3"],
            Reject::BadTelegram,
        ),
        (
            vec![reg, "0-1:24.2.1(261127000000)(00001.000*m3)"],
            Reject::BadTime,
        ),
        (vec![reg, "0-1:24.1.0(999)"], Reject::BadTelegram),
        (vec!["1-0:1.7.0(00.100*kW)"], Reject::BadTelegram),
    ];
    for (lines, expected) in cases {
        assert_eq!(
            decode_bytes(dsmr5_with(t, &lines).as_bytes()),
            Err(expected),
            "{lines:?}"
        );
    }
    // Meter ids: not hex, odd length, not alphanumeric once decoded, too long, missing.
    for id in ["E0031003262764316", "453", "2030", &"41".repeat(35), ""] {
        let text = telegram(
            &[
                "/ISK5\\2M550T-1012",
                "1-3:0.2.8(50)",
                "0-0:1.0.0(261127001504W)",
                &format!("0-0:96.1.1({id})"),
                reg,
            ],
            true,
        );
        assert_eq!(
            decode_bytes(text.as_bytes()),
            Err(Reject::BadMeterId),
            "{id}"
        );
    }
    let no_id = telegram(
        &[
            "/ISK5\\2M550T-1012",
            "1-3:0.2.8(50)",
            "0-0:1.0.0(261127001504W)",
            reg,
        ],
        true,
    );
    assert_eq!(decode_bytes(no_id.as_bytes()), Err(Reject::BadMeterId));
    // A versioned telegram without its time.
    let no_time = telegram(
        &[
            "/ISK5\\2M550T-1012",
            "1-3:0.2.8(50)",
            &format!("0-0:96.1.1({METER_HEX})"),
            reg,
        ],
        true,
    );
    assert_eq!(decode_bytes(no_time.as_bytes()), Err(Reject::BadTelegram));
    // Headers.
    for header in ["/IS5", "/I5K5abc", "ISK5\\2M550T-1012"] {
        let text = DSMR5.replacen("/ISK5\\2M550T-1012", header, 1);
        let bang = text.find('!').expect("has !");
        let text = format!(
            "{}{:04X}\r\n",
            &text[..=bang],
            crc16(&text.as_bytes()[..=bang])
        );
        assert_eq!(
            decode_bytes(text.as_bytes()),
            Err(Reject::BadTelegram),
            "{header}"
        );
    }
}

#[test]
fn rejects_never_show_the_meter_id() {
    let hex_lower = METER_HEX.to_lowercase();
    let needles = [METER, METER_HEX, hex_lower.as_str(), "E003"];
    let mut rejects: Vec<Reject> = Reject::ALL.to_vec();
    let typo = DSMR5.replace("012345.678", "012345.679");
    let bad_unit = dsmr5_with("261127001504W", &["1-0:1.8.1(1*Wh)"]);
    let bad_id = DSMR5.replace(METER_HEX, &METER_HEX[1..]);
    for payload in [
        typo.as_str(),
        bad_unit.as_str(),
        bad_id.as_str(),
        &DSMR5[..200],
    ] {
        rejects.push(decode_bytes(payload.as_bytes()).expect_err("reject"));
    }
    for r in rejects {
        for text in [r.to_string(), format!("{r:?}"), r.reason().to_string()] {
            for needle in needles {
                assert!(!text.contains(needle), "{text}");
            }
        }
    }
    // Nor does a decoded telegram's Debug.
    let t = decode_bytes(DSMR5.as_bytes()).expect("valid");
    let debug = format!("{t:?}");
    for needle in needles {
        assert!(!debug.contains(needle));
    }
}

#[test]
fn reject_labels() {
    assert_eq!(Reject::CrcMismatch.reason(), "crc_mismatch");
    assert_eq!(Reject::BadTelegram.reason(), "bad_telegram");
    let mut labels: Vec<&str> = Reject::ALL.iter().map(|r| r.reason()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), Reject::ALL.len());
}

fn electricity_strategy() -> impl Strategy<Value = Vec<(Register, u64)>> {
    proptest::collection::vec(
        proptest::option::of(0u64..=Register::MAX_PUBLISHED * 1000),
        4,
    )
    .prop_filter_map("at least one register", |values| {
        let v: Vec<(Register, u64)> = ELECTRICITY
            .iter()
            .zip(values)
            .filter_map(|(r, v)| v.map(|v| (*r, v)))
            .collect();
        (!v.is_empty()).then_some(v)
    })
}

/// Lines a telegram may hold, valid or not, for the structured never-panic property.
fn line_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1-0:1.8.1(000100.000*kWh)".to_string()),
        Just("0-0:1.0.0(261127001504W)".to_string()),
        Just(format!("0-0:96.1.1({METER_HEX})")),
        Just("1-3:0.2.8(50)".to_string()),
        Just("0-1:24.3.0(261126160000)(00)(60)(1)(0-1:24.2.1)(m3)".to_string()),
        Just("(00001.001)".to_string()),
        Just("0-1:24.2.1(261127000000W)(00001.000*m3)".to_string()),
        "[0-9:.()*A-Za-z-]{0,40}",
        "\\PC{0,40}",
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_bytes(&bytes);
        let mut slashed = bytes.clone();
        slashed.insert(0, b'/');
        let _ = decode_bytes(&slashed);
    }

    #[test]
    fn arbitrary_lines_never_panic(
        lines in proptest::collection::vec(line_strategy(), 0..30),
        crc in any::<bool>(),
    ) {
        let mut all = vec!["/ISK5\\2M550T-1012".to_string()];
        all.extend(lines);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let text = telegram(&refs, crc);
        if let Ok(t) = decode_bytes(text.as_bytes())
            && let Ok(placed) = place(t, now(), &cal(), DEFAULT_BOUNDARY_WINDOW, &limits())
        {
            prop_assert!(placed.decoded.readings.iter().all(|r| !r.tiers.is_empty()));
        }
    }

    #[test]
    fn encode_decode_round_trip(
        meter in "[A-Za-z0-9]{1,34}",
        secs in 946_684_800i64..4_070_908_799,
        electricity in electricity_strategy(),
        gas in proptest::option::of((946_684_800i64..4_070_908_799, 0u64..=Register::MAX_PUBLISHED * 1000)),
    ) {
        let meter: MeterId = meter.parse().expect("valid");
        let time = Timestamp::from_second(secs).expect("in range");
        let gas = gas.map(|(s, v)| (Timestamp::from_second(s).expect("in range"), v));
        let text = encode_dsmr5(&meter, time, &electricity, gas);
        let t = decode_bytes(text.as_bytes()).expect("what we encode decodes");
        prop_assert_eq!(t.version, Version::Dsmr5);
        prop_assert_eq!(t.time, Some(time));
        prop_assert_eq!(t.meter.expose(), meter.expose());
        prop_assert_eq!(t.electricity, electricity);
        prop_assert_eq!(t.gas, gas);
    }
}
