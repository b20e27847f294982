use meterstand_model::Ean;

use crate::Reject;

/// Payload format, the last topic level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Bincode,
    /// A raw DSMR P1 telegram (`p1` module).
    P1,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Bincode => "bincode",
            Format::P1 => "p1",
        }
    }
}

/// What a message on an ingest topic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `{prefix}/{ean}/{format}`: readings as the meter gave them; the first value wins.
    Reading,
    /// `{prefix}/{ean}/correction/{json|bincode}`: the metering company's corrections,
    /// which replace stored values.
    Correction,
}

/// Splits `{prefix}/{ean}/{format}` into a validated EAN and a format. A correction topic
/// is a `BadTopic` here; [`parse_ingest_topic`] accepts both.
pub fn parse_topic(prefix: &str, topic: &str) -> Result<(Ean, Format), Reject> {
    match parse_ingest_topic(prefix, topic)? {
        (ean, format, Mode::Reading) => Ok((ean, format)),
        (_, _, Mode::Correction) => Err(Reject::BadTopic),
    }
}

/// Splits `{prefix}/{ean}/{format}` or `{prefix}/{ean}/correction/{json|bincode}` into a
/// validated EAN, a format and the mode. Corrections come as JSON or bincode only.
pub fn parse_ingest_topic(prefix: &str, topic: &str) -> Result<(Ean, Format, Mode), Reject> {
    let rest = topic
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or(Reject::BadTopic)?;
    let (ean, format) = rest.split_once('/').ok_or(Reject::BadTopic)?;
    let (format, mode) = match format {
        "json" => (Format::Json, Mode::Reading),
        "bincode" => (Format::Bincode, Mode::Reading),
        "p1" => (Format::P1, Mode::Reading),
        "correction/json" => (Format::Json, Mode::Correction),
        "correction/bincode" => (Format::Bincode, Mode::Correction),
        _ => return Err(Reject::BadTopic),
    };
    let ean: Ean = ean.parse().map_err(|_| Reject::BadEan)?;
    Ok((ean, format, mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correction_topics_parse_with_their_mode() {
        let ean = Ean::from_body(87_100_000_000_000_001).expect("ean");
        let ean = ean.expose();
        let parse = |t: &str| parse_ingest_topic("meters", t).map(|(_, f, m)| (f, m));
        assert_eq!(
            parse(&format!("meters/{ean}/correction/json")),
            Ok((Format::Json, Mode::Correction))
        );
        assert_eq!(
            parse(&format!("meters/{ean}/correction/bincode")),
            Ok((Format::Bincode, Mode::Correction))
        );
        assert_eq!(
            parse(&format!("meters/{ean}/json")),
            Ok((Format::Json, Mode::Reading))
        );
        for bad in [
            "correction/p1",
            "correction",
            "correction/json/x",
            "json/correction",
        ] {
            assert_eq!(
                parse(&format!("meters/{ean}/{bad}")),
                Err(Reject::BadTopic),
                "{bad}"
            );
        }
        assert_eq!(
            parse_topic("meters", &format!("meters/{ean}/correction/json")).map(|_| ()),
            Err(Reject::BadTopic)
        );
    }
}
