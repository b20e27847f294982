use proptest::prelude::*;

use super::*;

fn serde(text: &str) -> Option<WirePayload<'_>> {
    serde_json::from_str(text).ok()
}

/// A JSON text from its parts: `ws` is drawn between every two tokens.
struct Text<'w> {
    out: String,
    ws: std::iter::Cycle<std::slice::Iter<'w, &'static str>>,
}

impl Text<'_> {
    fn token(&mut self, token: &str) {
        let ws = self.ws.next().copied().unwrap_or("");
        self.out.push_str(ws);
        self.out.push_str(token);
    }

    fn object(&mut self, fields: &[(String, String)]) {
        self.token("{");
        for (i, (key, value)) in fields.iter().enumerate() {
            if i > 0 {
                self.token(",");
            }
            self.token(key);
            self.token(":");
            self.token(value);
        }
        self.token("}");
    }
}

/// A payload's text: a meter and readings, each a list of (key, value) as JSON text, keys
/// and values already quoted where they are strings.
fn text(
    meter_first: bool,
    meter: &str,
    readings: &[Vec<(String, String)>],
    ws: &[&'static str],
) -> String {
    let mut t = Text {
        out: String::new(),
        ws: ws.iter().cycle(),
    };
    let mut list = Text {
        out: String::new(),
        ws: ws.iter().cycle(),
    };
    list.token("[");
    for (i, reading) in readings.iter().enumerate() {
        if i > 0 {
            list.token(",");
        }
        list.object(reading);
    }
    list.token("]");
    let meter = ("\"meter\"".to_string(), meter.to_string());
    let readings = ("\"readings\"".to_string(), list.out);
    let fields = if meter_first {
        [meter, readings]
    } else {
        [readings, meter]
    };
    t.object(&fields);
    t.token("");
    t.out
}

fn whitespace() -> impl Strategy<Value = Vec<&'static str>> {
    proptest::collection::vec(
        prop::sample::select(vec!["", "", "", " ", "\n  ", "\t", "\r\n"]),
        1..6,
    )
}

/// String contents as publishers write them, and (unless `plain`, now and then) some that
/// only serde_json may read: escapes and what JSON forbids inside a string.
fn contents(plain: bool) -> BoxedStrategy<String> {
    let usual = prop_oneof![
        prop::sample::select(vec![
            "1-0:1.8.1",
            "1-0:2.8.2",
            "0-1:24.2.1",
            "2026-11-26T23:15:00Z",
            "2026-11-27T00:00:00+01:00",
            "12345.678",
            "0.5",
            "kWh",
            "m3",
            "E0031003262764316",
            "",
            "ü€😀",
            "a\u{7f}b",
            "eight by",
            "seventeen bytes!!",
        ])
        .prop_map(str::to_string),
        "[ -!#-\\[\\]-~]{0,24}",
    ];
    if plain {
        return usual.boxed();
    }
    let odd = prop::sample::select(vec![
        r#"a\"b"#,
        r"a\\b",
        r"\u0031-0:1.8.1",
        r"kW\u0068",
        "tab\there",
        "nl\nx",
        r"\n",
        "\u{1}",
        "x\u{1f}",
    ])
    .prop_map(str::to_string);
    prop_oneof![12 => usual, 1 => odd].boxed()
}

/// A value: a string, or (unless `plain`, now and then) a number, `null`, or something
/// broken.
fn value(plain: bool) -> BoxedStrategy<String> {
    let string = contents(plain).prop_map(|c| format!("\"{c}\""));
    if plain {
        return string.boxed();
    }
    let other = prop::sample::select(vec![
        "12.5", "0", "-1", "1e3", "null", "true", "\"open", "[]", "{}",
    ])
    .prop_map(str::to_string);
    prop_oneof![12 => string, 1 => other].boxed()
}

const KEYS: [&str; 4] = ["obis", "time", "value", "unit"];

/// A reading's fields in `order` (indices into KEYS); unless `plain`, keys may be unknown,
/// repeated, escaped or missing.
fn reading(plain: bool) -> BoxedStrategy<Vec<(String, String)>> {
    let order = Just((0..4).collect::<Vec<usize>>()).prop_shuffle();
    let key = |i: usize| format!("\"{}\"", KEYS[i]);
    if plain {
        (order, proptest::collection::vec(value(true), 4))
            .prop_map(move |(order, values)| order.into_iter().map(key).zip(values).collect())
            .boxed()
    } else {
        (
            order,
            proptest::collection::vec(value(false), 5),
            prop_oneof![
                6 => Just(None),
                1 => prop::sample::select(vec![
                    "\"extra\"",
                    "\"obis\"",
                    "\"unit\"",
                    "\"ob\\u0069s\"",
                    "\"Obis\"",
                ])
                .prop_map(Some),
            ],
            prop::bool::weighted(0.1),
        )
            .prop_map(move |(order, mut values, extra, drop_one)| {
                let mut fields: Vec<(String, String)> =
                    order.into_iter().map(key).zip(values.drain(..4)).collect();
                if drop_one {
                    fields.pop();
                }
                if let Some(extra) = extra {
                    fields.push((extra.to_string(), values.remove(0)));
                }
                fields
            })
            .boxed()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Payloads in the shape publishers send (any field order, any whitespace, any string
    /// without escapes) take the fast path, and it reads them as serde_json does.
    #[test]
    fn the_usual_shape_takes_the_fast_path_and_reads_as_serde(
        meter_first in any::<bool>(),
        meter in contents(true),
        readings in proptest::collection::vec(reading(true), 0..6),
        ws in whitespace(),
    ) {
        let t = text(meter_first, &format!("\"{meter}\""), &readings, &ws);
        let fast = canonical(&t);
        prop_assert!(fast.is_some(), "{}", t);
        prop_assert_eq!(fast, serde(&t), "{}", t);
    }

    /// Whatever the fast path accepts, serde_json accepts and reads the same: over escapes,
    /// control characters, numbers, unknown, repeated and missing fields.
    #[test]
    fn what_the_fast_path_accepts_serde_reads_the_same(
        meter_first in any::<bool>(),
        meter in value(false),
        readings in proptest::collection::vec(reading(false), 0..4),
        meter_twice in prop::bool::weighted(0.05),
        ws in whitespace(),
    ) {
        let mut t = text(meter_first, &meter, &readings, &ws);
        if meter_twice {
            t = t.replacen('{', "{\"meter\":\"E2\",", 1);
        }
        if let Some(fast) = canonical(&t) {
            prop_assert_eq!(Some(fast), serde(&t), "{}", t);
        }
    }

    /// The same over broken texts: a usual payload with a character inserted, replaced or
    /// removed somewhere, or cut short.
    #[test]
    fn broken_texts_are_never_read_otherwise_than_by_serde(
        readings in proptest::collection::vec(reading(true), 1..4),
        ws in whitespace(),
        at in any::<prop::sample::Index>(),
        edit in 0..4u8,
        c in prop::sample::select(vec!['"', '\\', ',', ':', '{', '}', '[', ']', ' ', 'x', '1', '\u{1}', '\u{c}', 'é']),
    ) {
        let mut t = text(true, "\"E1\"", &readings, &ws);
        let mut at = at.index(t.len());
        while !t.is_char_boundary(at) {
            at -= 1;
        }
        match edit {
            0 => t.insert(at, c),
            1 => {
                t.remove(at.min(t.len() - 1));
                t.insert(at.min(t.len()), c);
            }
            2 => {
                t.remove(at.min(t.len() - 1));
            }
            _ => t.truncate(at),
        }
        if let Some(fast) = canonical(&t) {
            prop_assert_eq!(Some(fast), serde(&t), "{}", t);
        }
    }

    /// `stop` finds what a byte-by-byte search finds.
    #[test]
    fn the_word_search_finds_the_first_stop(
        bytes in proptest::collection::vec(
            prop_oneof![4 => 0x20u8..0x7f, 1 => any::<u8>(), 1 => Just(b'"'), 1 => Just(b'\\')],
            0..40,
        ),
    ) {
        let expected = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
        prop_assert_eq!(stop(&bytes), expected);
    }
}

#[test]
fn the_design_example_takes_the_fast_path() {
    let t = r#"{"meter": "E0031003262764316",
   "readings": [{"obis": "1-0:1.8.1", "time": "2026-11-26T23:15:00Z", "value": "12345.678", "unit": "kWh"}]}"#;
    let fast = canonical(t).expect("the usual shape");
    assert_eq!(fast.readings.len(), 1);
    assert_eq!(fast.readings[0].time, "2026-11-26T23:15:00Z");
    assert_eq!(Some(fast), serde(t));
}

#[test]
fn what_the_fast_path_leaves_is_still_read() {
    let with_number =
        r#"{"meter":"E1","readings":[{"obis":"1-0:1.8.1","time":"t","value":1.5,"unit":"kWh"}]}"#;
    let escaped = r#"{"meter":"E\u0031","readings":[]}"#;
    let unknown = r#"{"meter":"E1","source":"x","readings":[]}"#;
    for t in [with_number, escaped, unknown] {
        assert_eq!(canonical(t), None, "{t}");
        assert!(decode(t).is_ok(), "{t}");
    }
    assert_eq!(
        decode(escaped).map(|p| p.meter.into_owned()),
        Ok("E1".to_string())
    );
    for broken in [
        "",
        "{",
        r#"{"meter":"E1","readings":[],}"#,
        r#"{"meter":"E1"}"#,
    ] {
        assert_eq!(decode(broken), Err(Reject::Malformed), "{broken}");
    }
}
